"""`python -m train.huse` (`huse-train`): catalog -> features -> HUSE towers -> bundle + report ->
index. This module only parses arguments and dispatches: the pipeline is train.pipeline (stages
in train.stages), so importing it stays cheap and `--help` answers at once.

A user mistake (missing catalog, wrong columns, empty file, bad `--set`, missing `--config`, an
OUT that already holds a model) prints one line naming the fix and exits with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from train.config import COLUMN_ROLES, ConfigError, TrainConfig, config_keys, resolve_config

logger = logging.getLogger(__name__)

USAGE_ERROR = 2  # exit code of a mistake the user can fix (argparse uses 2 as well)
COLUMN_HINT = "name your columns with --column ROLE=COLUMN (roles: " + ", ".join(COLUMN_ROLES) + ")"


def _set_help() -> str:
    """Every config key (nested ones dotted) with its default, for `--help`."""
    return "\n".join(f"  {k} = {v!r}" for k, v in config_keys(TrainConfig()).items())


def _add_config_args(p: argparse.ArgumentParser, command: bool = False) -> None:
    """The config options; on a `command`'s parser they default to what was given before the
    command (`--cache-dir C features` and `features --cache-dir C` are the same), since
    argparse otherwise lets a subcommand's defaults overwrite the main parser's values."""
    keep = {"default": argparse.SUPPRESS} if command else {}
    p.add_argument("--config", help="JSON preset applied over the defaults (train/configs/)",
                   **keep)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config key (literal_eval, type-checked); repeatable; "
                        "keys and defaults are listed below", **(keep or {"default": []}))
    p.add_argument("--column", action="append", metavar="ROLE=COLUMN",
                   help=f"catalog column name for a role ({', '.join(COLUMN_ROLES)}) when it "
                        "differs, e.g. --column id=sku --column title=name",
                   **(keep or {"default": []}))
    _add_cache_dir(p, command)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars", **keep)


def _add_cache_dir(p: argparse.ArgumentParser, command: bool = False) -> None:
    p.add_argument("--cache-dir", help="feature cache (default: $HUSE_CACHE_DIR or "
                                       "~/.cache/huse/features)",
                   **({"default": argparse.SUPPRESS} if command else {}))


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="python -m train.huse", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train HUSE towers on a catalog and write OUT/bundle (model + report) and "
                    "OUT/index.",
        epilog="config keys (--set KEY=VALUE) and their defaults:\n" + _set_help())
    p.add_argument("--catalog", help="catalog CSV/JSONL (columns id,title,image,category,...)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model already in OUT (refused otherwise)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    p.add_argument("--features-shards", metavar="DIR",
                   help="read features from these feature shards (features --engine ray "
                        "--out-shards DIR); same as --set streaming.shards=DIR")
    _add_config_args(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("sample-catalog", formatter_class=fmt,
                       help="write a synthetic catalog (train.sample_catalog)", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER, help="arguments of train.sample_catalog")
    s = sub.add_parser("features", formatter_class=fmt,
                       help="extract and cache frozen features only")
    s.add_argument("--catalog", required=True)
    s.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: Ray Data actor pool writing feature shards (extra 'scale')")
    s.add_argument("--address", help="Ray cluster to join (default: a local one on 127.0.0.1)")
    s.add_argument("--out-shards", help="feature shard directory of --engine ray (default: "
                                        "CACHE/shards/<catalog name>)")
    _add_config_args(s, command=True)
    s = sub.add_parser("evaluate", formatter_class=fmt, help="re-run the evaluation of a bundle")
    s.add_argument("bundle")
    s.add_argument("--catalog", required=True)
    _add_cache_dir(s, command=True)
    s = sub.add_parser("build-index", formatter_class=fmt,
                       help="embed a catalog with a bundle into an index")
    s.add_argument("--bundle", required=True)
    s.add_argument("--catalog", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="FAISS index directory")
    where.add_argument("--target", help="Milvus collection: milvus://host:port/name (or "
                                        "milvus-lite:///file.db?collection=name; extra 'scale')")
    s.add_argument("--factory", default=None,
                   help="FAISS factory or 'auto' (default: the bundle's training config); "
                        "Milvus: auto, FLAT, IVF_FLAT")
    _add_cache_dir(s, command=True)
    s = sub.add_parser("near-duplicates", formatter_class=fmt,
                       help="list indexed products that are the same item (CSV + HTML sheet)")
    s.add_argument("--bundle", required=True)
    s.add_argument("--index", required=True)
    s.add_argument("--threshold", type=float, default=None,
                   help="visual cosine (default: the bundle's, picked on validation photos)")
    s.add_argument("--out", default=None, help="output dir (default: the index dir)")
    return p


def parse_columns(items: Sequence[str]) -> dict[str, str] | None:
    """{"id": "sku", ...} from ["id=sku", ...]; ConfigError on a malformed item."""
    out = {}
    for item in items:
        role, sep, column = item.partition("=")
        if not sep or role.strip() not in COLUMN_ROLES or not column.strip():
            raise ConfigError(f"--column expects ROLE=COLUMN with ROLE one of {COLUMN_ROLES}, "
                              f"got {item!r}")
        out[role.strip()] = column.strip()
    return out or None


def _config_from_args(args: argparse.Namespace, **explicit: Any) -> TrainConfig:
    return resolve_config(args.config, args.set, cache_dir=args.cache_dir,
                          show_progress=not args.no_progress,
                          catalog_columns=parse_columns(args.column), **explicit)


def _sample_catalog(args: argparse.Namespace) -> None:
    from train.sample_catalog import main as sample_main

    sample_main(args.args)


def _features(args: argparse.Namespace) -> None:
    if args.engine == "ray":
        from train.data import ray_features

        shards = ray_features(args.catalog, _config_from_args(args), args.address,
                              args.out_shards)
        print(f"{len(shards)} products in {len(shards.files)} shards: {shards.directory}")
        return
    from train.data import load_features

    feats = load_features(args.catalog, _config_from_args(args))
    print(f"{len(feats.products)} products: image {feats.image.shape}, text {feats.text.shape}")


def _evaluate(args: argparse.Namespace) -> None:
    from train.pipeline import evaluate_bundle

    evaluate_bundle(args.bundle, args.catalog, cache_dir=args.cache_dir)
    print(Path(args.bundle) / "report.md")


def _build_index(args: argparse.Namespace) -> None:
    from train.build_index import build_index

    print(build_index(args.bundle, args.catalog, args.out or args.target, factory=args.factory,
                      cache_dir=args.cache_dir))


def _near_duplicates(args: argparse.Namespace) -> None:
    from train.near_duplicates import list_near_duplicates

    csv_path, html_path, n = list_near_duplicates(args.bundle, args.index, args.threshold,
                                                  args.out)
    print(f"{n} near-duplicate pairs: {csv_path} {html_path}")


def _train(args: argparse.Namespace) -> None:
    from train.pipeline import BUNDLE_DIR, run

    if not args.catalog or not args.out:
        raise ConfigError("--catalog and --out are required for the full pipeline "
                          "(see --help)")
    sets = [f"streaming.shards={args.features_shards!r}"] if args.features_shards else []
    args.set = [*args.set, *sets]
    cfg = _config_from_args(args, catalog=args.catalog, out=args.out,
                            resume=True if args.resume else None,
                            overwrite=True if args.overwrite else None)
    from train import distributed

    rank = distributed.init_from_env()  # under torchrun: join its job (else one process)
    try:
        out = run(cfg)
    finally:
        distributed.shutdown()
    if rank.main:
        print((out / BUNDLE_DIR / "report.md").read_text())


COMMANDS: dict[str | None, Callable[[argparse.Namespace], None]] = {
    "sample-catalog": _sample_catalog, "features": _features, "evaluate": _evaluate,
    "build-index": _build_index, "near-duplicates": _near_duplicates, None: _train,
}


def _check_catalog(catalog: str | None) -> None:
    if catalog and not Path(catalog).is_file():
        raise ConfigError(f"--catalog {catalog}: no such file; give the path of your catalog "
                          "CSV/JSONL (or write one with `python -m train.huse sample-catalog DIR`)")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a fixable input, not a bug (imported lazily: embedder is light)."""
    from embedder.errors import HuseError

    return ConfigError, HuseError, FileNotFoundError


def _hint(error: BaseException) -> str:
    from embedder.errors import MissingColumnsError

    return f"; {COLUMN_HINT}" if isinstance(error, MissingColumnsError) else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-variant probing
    try:
        _check_catalog(getattr(args, "catalog", None))
        COMMANDS[args.command](args)
    except _user_errors() as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}{_hint(e)}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
