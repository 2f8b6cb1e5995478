"""`python -m api` (`huse-serve`): serve a bundle + index over HTTP.

Flags override HUSE_* environment variables, which override the defaults of `Settings`; each
flag names its `Settings` field, so the settings are built without copying fields by hand.
User mistakes (no model, a directory that is not a trained model, a bundle and an index that
do not belong together, a busy port, a bad value) are found before the server starts and are
answered with one line naming the fix and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api.settings import Settings
from embedder.backbones import ENGINES, ONNX_MODULES
from embedder.colour import split_spec as split_colour_spec

USAGE_ERROR = 2
PROG = "huse-serve"
TRAIN_HINT = "the --out directory of `huse-train --catalog CSV --out DIR`"


class UsageError(Exception):
    """A mistake the user can fix; the message names the fix."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the HUSE classify/search API, its docs (/docs) and the web page over "
        f"a model directory: {TRAIN_HINT} (DIR/bundle + DIR/index). Flags override HUSE_* "
        "environment variables (e.g. HUSE_API_KEY).",
    )

    def setting(flag: str, field: str, **kwargs: Any) -> None:
        """A flag for one Settings field: its help and default come from the field."""
        info = Settings.model_fields[field]
        shown = "" if info.default is None else f" (default: {info.default})"
        kwargs.setdefault("help", f"{info.description}{shown}")
        p.add_argument(flag, dest=field, default=None, **kwargs)

    setting("--model", "model_dir", type=Path, metavar="DIR")
    setting("--bundle", "bundle_dir", type=Path, metavar="DIR")
    setting("--index", "index_dir", metavar="DIR|URI",
            help="index directory (instead of --model's), or a Milvus collection "
                 "milvus://host:port/name (extra 'scale')")
    setting("--uploads", "uploads_dir", type=Path, metavar="DIR")
    setting("--api-key", "api_key", metavar="KEY")
    setting("--cors-origin", "cors_origins", action="append", metavar="ORIGIN",
            help="origin allowed to call from a browser; repeat for more (default: *)")
    setting("--no-batching", "batching", action="store_const", const=False,
            help="one model call per request (the benchmark's baseline)")
    setting("--batch-max-size", "batch_max_size", type=int, metavar="N")
    setting("--batch-max-wait-ms", "batch_max_wait_ms", type=float, metavar="MS")
    setting("--batch-workers", "batch_workers", type=int, metavar="N")
    setting("--image-batch-max", "image_batch_max", type=int, metavar="N")
    setting("--image-engine", "image_engine", choices=ENGINES)
    setting("--text-engine", "text_engine", choices=ENGINES)
    setting("--event-loop", "event_loop", choices=("auto", "asyncio", "uvloop"))
    setting("--http-parser", "http_parser", choices=("auto", "h11", "httptools"))
    setting("--torch-threads", "torch_threads", type=int, metavar="N")
    setting("--blas-threads", "blas_threads", type=int, metavar="N")
    setting("--inline-search-max-ms", "inline_search_max_ms", type=float, metavar="MS")
    setting("--read-timeout", "request_read_timeout_s", type=float, metavar="S")
    setting("--max-connections", "max_connections", type=int, metavar="N")
    p.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log level (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from every flag that names a field (and was given), over HUSE_* variables."""
    given = {f: v for f in Settings.model_fields if (v := getattr(args, f, None)) is not None}
    if "://" in str(given.get("index_dir", "")):  # --index milvus://...: not a directory
        given["index_uri"] = given.pop("index_dir")
    try:
        return Settings(**given)
    except ValidationError as e:
        flags = {a.dest: a.option_strings[0] for a in build_parser()._actions if a.option_strings}
        first = e.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in ("model_dir", "bundle_dir", "index_dir", "") and "model_dir" in first["msg"]:
            raise UsageError(f"no model to serve: pass --model DIR ({TRAIN_HINT}), or both "
                             "--bundle and --index") from e
        raise UsageError(f"{flags.get(field, field)}: {first['msg']}") from e


def check_model(settings: Settings) -> None:
    """The bundle and index exist, are what `huse-train` writes, and belong together."""
    from embedder.bundle_io import CONFIG_FILE, LABELS_FILE, MODEL_FILES, WEIGHTS_FILE, fingerprint
    from index.store import MANIFEST, METADATA

    assert settings.bundle_dir is not None and settings.index_target is not None
    if settings.model_dir is not None and not settings.model_dir.is_dir():
        raise UsageError(f"--model {settings.model_dir} does not exist: pass {TRAIN_HINT}")
    bundle, index = settings.bundle_dir, settings.index_dir
    parts = [("bundle", bundle, (CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE))]
    if index is not None:  # a Milvus index (index_uri) checks the bundle when it opens
        parts.append(("index", index, (MANIFEST, METADATA)))
    for kind, directory, needed in parts:
        if not directory.is_dir():
            raise UsageError(f"{kind} directory {directory} does not exist: pass --model with "
                             f"{TRAIN_HINT}")
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise UsageError(f"{kind} directory {directory} has no {', '.join(missing)}: it is "
                             f"not a trained model; pass {TRAIN_HINT} (or train again)")
    check_backbones(bundle / CONFIG_FILE)
    if index is None:
        return
    try:
        built_for = json.loads((index / MANIFEST).read_bytes()).get("bundle_fingerprint")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise UsageError(f"{index / MANIFEST} is not readable JSON ({e}): rebuild the index "
                         "with `huse-train build-index`") from e
    files = {n: (bundle / n).read_bytes() for n in MODEL_FILES if (bundle / n).is_file()}
    if built_for != fingerprint(files):
        raise UsageError(f"index {index} was built from another bundle than {bundle}: serve "
                         "the pair one `huse-train --out DIR` wrote, or rebuild the index")


def check_backbones(config_file: Path) -> None:
    """Backbones the bundle names by local directory (`hf:/dir`) must be on this machine."""
    try:
        config = json.loads(config_file.read_bytes())
        specs = {kind: config[f"{kind}_backbone"]["spec"] for kind in ("image", "text")}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"{config_file} is not a bundle config ({e!r}): pass {TRAIN_HINT}") from e
    for kind, spec in specs.items():
        spec = split_colour_spec(str(spec))[0]  # a "+colour" suffix is not part of the path
        local = spec.removeprefix("hf:")
        is_dir_spec = spec.startswith("hf:") and local.startswith(("/", "."))
        if is_dir_spec and not Path(local).is_dir():
            raise UsageError(f"the bundle's {kind} backbone {spec} is not on this machine: copy "
                             "that directory here, or train with a packaged backbone")


def check_engine(settings: Settings) -> None:
    for flag, engine in (("--image-engine", settings.image_engine),
                         ("--text-engine", settings.text_engine)):
        missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
        if engine.startswith("onnx") and missing:
            raise UsageError(f"{flag} {engine} needs {', '.join(missing)}: pip install "
                             f"'huse-search[onnx]' (or use {flag} torch)")


def check_port(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port number (0-65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}): pass another "
                             "--port (or --host)") from e


class StartupFailure(logging.Filter):
    """Keeps why the app's startup (loading the bundle or the index) failed, for a one-line
    error, and drops uvicorn's traceback and its closing line."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            self.reason = f"{type(error).__name__}: {error}"
            return False
        message = record.getMessage()
        if "Traceback (most recent call last)" in message:  # Starlette's startup.failed text
            self.reason = message.strip().splitlines()[-1]
            return False
        return not (self.reason is not None and "startup failed" in message)


def serve(settings: Settings, args: argparse.Namespace) -> None:
    """Run uvicorn; "open http://..." is printed once the model is loaded and the port bound.
    A model or index that fails to load (a check above cannot foresee every damaged file) is
    a UsageError unless --debug."""
    import uvicorn

    from api.app import create_app
    from api.server import uvicorn_config

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"HUSE search: open http://{args.host}:{args.port}/  (API docs: /docs)",
                      flush=True)

    config = uvicorn_config(create_app(settings), settings, host=args.host, port=args.port,
                            log_level=args.log_level)
    failure = StartupFailure()
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not args.debug:  # after Config, which sets up uvicorn's loggers
        uvicorn_log.addFilter(failure)
    server = Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 3 when the startup fails
        if args.debug:
            raise
    finally:
        uvicorn_log.removeFilter(failure)
    if not server.started:
        reason = failure.reason or "see the log above"
        raise UsageError(f"the model could not be loaded ({reason}); retrain or rebuild it, "
                         "or run with --debug for the traceback")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-variant probing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        settings = build_settings(args)
        check_model(settings)
        check_engine(settings)
        check_port(args.host, args.port)
    except UsageError as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    if settings.api_key is None:
        print("no API key configured (--api-key or HUSE_API_KEY): writes are refused", flush=True)
    try:
        serve(settings, args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
