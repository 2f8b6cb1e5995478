"""`python -m train.huse`: catalog -> features -> HUSE towers -> bundle + report -> index.

Stages are plain functions (tests call them directly); `main` only parses and dispatches.
Output layout of `run(cfg)`: OUT/rejects.csv, OUT/checkpoints/last.pt, OUT/bundle/ (config.json,
towers.safetensors, labels.json, centroids.npz, tfidf.json, report.json, report.md, plots/),
OUT/index/ (manifest.json, vectors.faiss, meta.sqlite). torch, faiss and sklearn are imported
inside the functions so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig, resolve_config

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
INDEX_DIR = "index"
CHECKPOINT_DIR = "checkpoints"
REJECTS_FILE = "rejects.csv"
INDEX_REPORT_KEYS = ("factory", "ntotal", "d", "build")  # manifest entries copied to the report


@contextmanager
def timed(what: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log (and optionally record) the seconds a phase took."""
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    logger.info("%s: %.1f s", what, dt)
    if timings is not None:
        timings[what] = round(dt, 2)


@dataclass
class CatalogFeatures:
    """Valid products and their frozen features, row-aligned."""

    products: list[Any]  # embedder.catalog.Product
    image: np.ndarray
    text: np.ndarray
    image_backbone: dict  # {"spec", "dim"}
    text_backbone: Any  # the loaded text backbone (it also embeds class names)
    catalog_summary: dict

    @property
    def titles(self) -> list[str]:
        return [p.title for p in self.products]


def _backbone_device(cfg: TrainConfig) -> str | None:
    return None if cfg.device == "auto" else cfg.device


def load_features(
    catalog: str | Path, cfg: TrainConfig, rejects_path: Path | None = None
) -> CatalogFeatures:
    """Read + validate the catalog, then extract (cached) image and title features."""
    from embedder.backbones import load_backbone
    from embedder.catalog import read_catalog
    from embedder.errors import CatalogError
    from embedder.features import FeatureCache, extract_image_features, extract_text_features

    report = read_catalog(catalog, rejects_path=rejects_path)
    if not report.products:
        raise CatalogError(f"{catalog}: no valid products ({report.summary()})")
    logger.info("catalog: %s", report.summary())
    device = _backbone_device(cfg)
    cache = FeatureCache(cfg.cache_dir or None)
    try:
        image_bb = load_backbone(cfg.image_backbone, device=device)
        image = extract_image_features(report.products, image_bb, cache,
                                       batch_size=cfg.feature_batch_size,
                                       num_workers=cfg.num_workers,
                                       show_progress=cfg.show_progress)
        image_info = {"spec": image_bb.spec, "dim": image_bb.dim}
        del image_bb
        text_bb = load_backbone(cfg.text_backbone, device=device)
        text = extract_text_features([p.title for p in report.products], text_bb, cache,
                                     show_progress=cfg.show_progress)
    finally:
        cache.close()
    return CatalogFeatures(report.products, image, text, image_info, text_bb, report.summary())


def head_values(products: Sequence[Any], attribute_heads: Sequence[str]) -> dict[str, list]:
    """Every head's raw class name per product: category levels, then attribute columns."""
    from train.splits import attribute_values, level_heads

    values: dict[str, list] = dict(level_heads([p.category for p in products]))
    values.update(attribute_values([p.attributes for p in products], attribute_heads))
    return values


def leaf_head_name(values: dict[str, list]) -> str:
    return max((h for h in values if h.startswith("level")), key=lambda h: int(h[5:]))


def _input_norm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column standardisation fit on training rows (constant columns left unscaled)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean.astype(np.float32), (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)


def build_towers(cfg: TrainConfig, feats: CatalogFeatures, train_rows: np.ndarray,
                 tfidf: Any, heads: dict[str, int]):
    """HuseModel sized from the data; tower inputs standardised on the training split. TF-IDF
    columns are not standardised (they are sparse) but scaled by sqrt(text dim), so the TF-IDF
    block (unit norm) weighs as much as the standardised backbone block (norm ~ sqrt(dim))."""
    import torch

    from embedder.towers import HuseModel, Tower

    torch.manual_seed(cfg.seed)
    tfidf_dim = tfidf.dim if tfidf is not None else 0
    dt = feats.text.shape[1]
    model = HuseModel(
        Tower(feats.image.shape[1], cfg.image_tower, cfg.embed_dim, cfg.dropout),
        Tower(dt + tfidf_dim, cfg.text_tower, cfg.embed_dim, cfg.dropout),
        heads,
        logit_scale=cfg.logit_scale,
    )
    shift, scale = _input_norm(feats.image[train_rows])
    model.image_tower.set_input_norm(torch.from_numpy(shift), torch.from_numpy(scale))
    shift, scale = _input_norm(feats.text[train_rows])
    shift = np.concatenate([shift, np.zeros(tfidf_dim, np.float32)])
    scale = np.concatenate([scale, np.full(tfidf_dim, math.sqrt(dt), np.float32)])
    model.text_tower.set_input_norm(torch.from_numpy(shift), torch.from_numpy(scale))
    return model


def labeled_split(feats: CatalogFeatures, rows: np.ndarray, y: dict[str, np.ndarray]):
    from train.evaluate import LabeledFeatures

    return LabeledFeatures(
        product_ids=[feats.products[i].id for i in rows],
        titles=[feats.products[i].title for i in rows],
        image=feats.image[rows], text=feats.text[rows],
        labels={h: v[rows] for h, v in y.items()},
        categories=[feats.products[i].category_path for i in rows],
    )


def _fusion_weight(cfg: TrainConfig, bundle: Any, feats: CatalogFeatures, val_rows: np.ndarray,
                   y_leaf: np.ndarray) -> Any:
    """The configured fusion weight, or the one the validation split prefers."""
    from train.fusion import FusionChoice, choose_fusion_weight

    if cfg.fusion_image_weight is not None:
        return FusionChoice(cfg.fusion_image_weight, {})
    return choose_fusion_weight(bundle, feats.image[val_rows], feats.text[val_rows],
                                [feats.titles[i] for i in val_rows], y_leaf[val_rows],
                                cfg.fusion_grid)


def run(cfg: TrainConfig) -> Path:
    """The whole pipeline (see the module docstring for the output layout); returns OUT."""
    from embedder.bundle import Bundle, TfidfText, class_centroids, model_config
    from train.build_index import index_products
    from train.evaluate import EvalConfig, evaluate
    from train.loop import TrainData, train_model
    from train.report import write_report
    from train.semantic_graph import build_semantic_graph
    from train.splits import build_label_spaces, oversample, stratified_split

    cfg = cfg.validate()
    if not cfg.catalog or not cfg.out:
        raise ValueError(f"catalog and out are required, got catalog={cfg.catalog!r}, "
                         f"out={cfg.out!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("resolved config: %s", cfg.to_dict())
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    with timed("catalog + features", timings):
        feats = load_features(cfg.catalog, cfg, rejects_path=out / REJECTS_FILE)
    values = head_values(feats.products, cfg.attribute_heads)
    leaf = leaf_head_name(values)
    splits = stratified_split(values[leaf], cfg.val_frac, cfg.test_frac, cfg.seed)
    spaces = build_label_spaces(values, splits.train, cfg.min_per_class)
    tfidf = None
    if cfg.use_tfidf:
        tfidf = TfidfText.fit([feats.titles[i] for i in splits.train], cfg.tfidf_max_features)
        text_input = np.hstack([feats.text, tfidf.transform(feats.titles)])
    else:
        text_input = feats.text
    with timed("semantic graph", timings):
        A = build_semantic_graph(spaces.labels[leaf], feats.text_backbone)
    heads = {h: len(spaces.labels[h]) for h in spaces.labels}
    model = build_towers(cfg, feats, splits.train, tfidf, heads)
    train_rows = (oversample(splits.train, spaces.y[leaf], cfg.oversample_percentile, cfg.seed)
                  if cfg.oversample_percentile is not None else splits.train)
    data = TrainData(image=feats.image, text=text_input.astype(np.float32), y=spaces.y,
                     train_idx=train_rows, val_idx=splits.val, leaf_head=leaf, A=A)
    with timed("training", timings):
        result = train_model(model, data, cfg, out / CHECKPOINT_DIR)

    config = model_config(
        image_backbone=feats.image_backbone,
        text_backbone={"spec": feats.text_backbone.spec, "dim": feats.text_backbone.dim},
        embed_dim=cfg.embed_dim, image_hidden=cfg.image_tower, text_hidden=cfg.text_tower,
        dropout=cfg.dropout, tfidf_dim=tfidf.dim if tfidf else 0, heads=heads, leaf_head=leaf,
        logit_scale=cfg.logit_scale,
        loss_weights={"w_cls": cfg.w_cls, "w_graph": cfg.w_graph, "w_gap": cfg.w_gap,
                      "graph_margin": cfg.graph_margin},
        other_threshold=cfg.other_threshold, train_config=cfg.to_dict(),
    )
    bundle = Bundle(config, model.cpu(), spaces.labels, tfidf=tfidf)
    fusion = _fusion_weight(cfg, bundle, feats, splits.val, spaces.y[leaf])
    bundle.config["fusion_image_weight"] = fusion.image_weight
    tr = splits.train
    train_emb = bundle.embed_features(feats.image[tr], feats.text[tr],
                                      [feats.titles[i] for i in tr])
    bundle.centroids = {h: class_centroids(train_emb, spaces.y[h][tr], n)
                        for h, n in heads.items()}
    bundle_dir = bundle.save(out / BUNDLE_DIR)

    with timed("evaluation", timings):
        evaluation, artifacts = evaluate(
            bundle, labeled_split(feats, splits.train, spaces.y),
            labeled_split(feats, splits.test, spaces.y), EvalConfig(seed=cfg.seed),
            val=labeled_split(feats, splits.val, spaces.y) if len(splits.val) else None)
    with timed("index build", timings):
        manifest = index_products(bundle, feats.products, feats.image, feats.text,
                                  out / INDEX_DIR, factory=cfg.index_factory)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    report = {
        "evaluation": evaluation,
        "data": {
            **{k: v for k, v in feats.catalog_summary.items() if k != "rejects_by_reason"},
            "rejects_by_reason": feats.catalog_summary.get("rejects_by_reason", {}),
            "splits": {"train": len(splits.train), "val": len(splits.val),
                       "test": len(splits.test)},
            "split_rule": splits.summary()["rule"],
            "train_only_classes": splits.summary()["train_only_classes"] or "none",
            "rare_classes": {h: list(ex) for h, ex in spaces.excluded.items()},
            "oversampled_rows": int(len(train_rows) - len(splits.train)),
        },
        "label_spaces": spaces.summary(cfg.min_per_class),
        "training": {"best_epoch": result.best_epoch, "epochs": len(result.history),
                     "stopped_early": result.stopped_early,
                     "fusion_image_weight": fusion.image_weight,
                     "val_top1_by_fusion_weight": fusion.val_top1_by_weight or "n/a"},
        "bundle": {"dir": str(bundle_dir), "fingerprint": bundle.fingerprint},
        "index": {"dir": str(out / INDEX_DIR),
                  **{k: v for k, v in manifest.items() if k in INDEX_REPORT_KEYS}},
        "timings_s": timings,
        "config": cfg.to_dict(),
    }
    write_report(bundle_dir, report, result.history, artifacts)
    logger.info("done in %.1f s: %s", timings["total"], out)
    return out


def evaluate_bundle(bundle_dir: str | Path, catalog: str | Path,
                    cache_dir: str | None = None) -> dict:
    """Re-run evaluation of a saved bundle on the catalog (splits rebuilt from the bundle's
    training config, so an unchanged catalog gives the same test split); rewrites the report,
    keeping its training history and data notes."""
    from embedder.bundle import Bundle
    from train.config import apply_overrides
    from train.evaluate import EvalConfig, evaluate
    from train.report import write_report
    from train.splits import stratified_split

    bundle = Bundle.load(bundle_dir)
    cfg = apply_overrides(TrainConfig(), bundle.config["train_config"])
    if cache_dir is not None:
        cfg.cache_dir = cache_dir
    feats = load_features(catalog, cfg)
    values = head_values(feats.products, cfg.attribute_heads)
    splits = stratified_split(values[bundle.leaf_head], cfg.val_frac, cfg.test_frac, cfg.seed)
    y = {}
    for head in bundle.heads:
        index = {c: j for j, c in enumerate(bundle.labels[head])}
        y[head] = np.array([index.get(v, -1) for v in values[head]], dtype=np.int64)
    evaluation, artifacts = evaluate(
        bundle, labeled_split(feats, splits.train, y), labeled_split(feats, splits.test, y),
        EvalConfig(seed=cfg.seed),
        val=labeled_split(feats, splits.val, y) if len(splits.val) else None)
    previous = Path(bundle_dir) / "report.json"
    report = json.loads(previous.read_text()) if previous.exists() else {}
    history = report.pop("history", [])
    report.update({"evaluation": evaluation, "config": cfg.to_dict(),
                   "bundle": {"dir": str(bundle_dir), "fingerprint": bundle.fingerprint}})
    write_report(Path(bundle_dir), report, history, artifacts)
    return report


# ----------------------------------------------------------------------------- CLI

def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON preset applied over the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one TrainConfig field (literal_eval, type-checked); repeatable")
    p.add_argument("--cache-dir", help="feature cache (default $HUSE_CACHE_DIR or "
                                       "~/.cache/huse/features)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.huse",
        description="Train HUSE towers on a catalog and write OUT/bundle (model + report) and "
                    "OUT/index. Defaults: see train/config.py (TrainConfig).")
    p.add_argument("--catalog", help="catalog CSV/JSONL (id,title,image,category,...)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    _add_config_args(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("sample-catalog", help="write a synthetic catalog (OUT/catalog.csv)")
    s.add_argument("out")
    s.add_argument("--n", type=int, default=600, help="products (default 600)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    s = sub.add_parser("features", help="extract and cache frozen features only")
    s.add_argument("--catalog", required=True)
    _add_config_args(s)
    s = sub.add_parser("evaluate", help="re-run the evaluation of a bundle")
    s.add_argument("bundle")
    s.add_argument("--catalog", required=True)
    s.add_argument("--cache-dir")
    s = sub.add_parser("build-index", help="embed a catalog with a bundle into an index")
    s.add_argument("--bundle", required=True)
    s.add_argument("--catalog", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--factory", default=None, help="FAISS factory or 'auto' (bundle's default)")
    s.add_argument("--cache-dir")
    return p


def _config_from_args(args: argparse.Namespace, **explicit: Any) -> TrainConfig:
    return resolve_config(args.config, args.set, cache_dir=args.cache_dir,
                          show_progress=not args.no_progress, **explicit)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-variant probing
    if args.command == "sample-catalog":
        from train.sample_catalog import write_sample_catalog

        print(write_sample_catalog(Path(args.out), n_products=args.n, seed=args.seed))
    elif args.command == "features":
        feats = load_features(args.catalog, _config_from_args(args))
        print(f"{len(feats.products)} products: image {feats.image.shape}, "
              f"text {feats.text.shape}")
    elif args.command == "evaluate":
        evaluate_bundle(args.bundle, args.catalog, cache_dir=args.cache_dir)
        print(Path(args.bundle) / "report.md")
    elif args.command == "build-index":
        from train.build_index import build_index

        print(build_index(args.bundle, args.catalog, args.out, factory=args.factory,
                          cache_dir=args.cache_dir))
    else:
        if not args.catalog or not args.out:
            build_parser().error("--catalog and --out are required for the full pipeline")
        cfg = _config_from_args(args, catalog=args.catalog, out=args.out,
                                resume=True if args.resume else None)
        out = run(cfg)
        print((out / BUNDLE_DIR / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
