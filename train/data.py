"""Data types shared by the training stages, evaluation and the re-run commands: the catalog's
frozen features, labelled splits, and a training config rebuilt from a saved bundle.

torch, faiss and sklearn are imported inside the functions, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig, apply_overrides, lenient_overrides

logger = logging.getLogger(__name__)

LEVEL_PREFIX = "level"  # category heads are level1..levelN (train.splits.level_heads)


class ProductFeatures:
    """What every holder of the catalog's features has (CatalogFeatures, and
    train.streaming.ShardedFeatures, which reads them from feature shards)."""

    products: list[Any]  # embedder.catalog.Product, valid ones in catalog order
    text_backbone: Any  # the loaded text backbone (it also embeds class names)
    # the packaged image backbone's (n, Di) features when `image` comes from a tuned one (the
    # baselines read them); None: the image features are the packaged backbone's
    frozen_image: np.ndarray | None = None

    @property
    def titles(self) -> list[str]:
        return [p.title for p in self.products]

    @property
    def text_backbone_info(self) -> Any:
        from embedder.bundle_config import BackboneInfo

        bb = self.text_backbone
        return BackboneInfo(bb.spec, bb.dim, bb.engine)


@dataclass(frozen=True)
class CatalogFeatures(ProductFeatures):
    """Valid products and their backbone features, row-aligned, in memory."""

    products: list[Any]  # embedder.catalog.Product
    image: np.ndarray  # (n, Di) float32
    text: np.ndarray  # (n, Dt) float32
    image_backbone: Any  # embedder.bundle_config.BackboneInfo
    text_backbone: Any
    catalog_summary: dict
    frozen_image: np.ndarray | None = None  # see ProductFeatures
    streamed = False  # train.streaming.ShardedFeatures: True

    @property
    def dims(self) -> tuple[int, int]:
        return self.image.shape[1], self.text.shape[1]

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.image[rows], self.text[rows]

    def chunks(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, image, text) in one chunk (ShardedFeatures: one per shard)."""
        yield (rows, *self.take(rows))


def read_products(catalog: str | Path, cfg: TrainConfig,
                  rejects_path: Path | None = None) -> Any:
    """The validated catalog (embedder.catalog.CatalogReport); CatalogError when it has no
    valid product."""
    from embedder.catalog import ColumnMap, read_catalog
    from embedder.errors import CatalogError

    report = read_catalog(catalog, columns=ColumnMap(**cfg.catalog_columns),
                          rejects_path=rejects_path)
    if not report.products:
        raise CatalogError(f"{catalog}: no valid products ({report.summary()})")
    logger.info("catalog: %s", report.summary())
    return report


def load_features(catalog: str | Path, cfg: TrainConfig, rejects_path: Path | None = None,
                  report: Any = None, image_tail: Any = None) -> CatalogFeatures:
    """Read + validate the catalog (unless its `report` is given), then extract (cached) image
    and title features (the image backbone with `image_tail`'s tuned weights when given)."""
    from embedder.backbones import load_backbone
    from embedder.features import FeatureCache, extract_text_features

    if report is None:
        report = read_products(catalog, cfg, rejects_path)
    device = None if cfg.device == "auto" else cfg.device
    image, image_info = image_features(report.products, cfg, image_tail)
    with FeatureCache(cfg.cache_dir or None) as cache:
        text_bb = load_backbone(cfg.text_backbone, device=device)
        text = extract_text_features([p.title for p in report.products], text_bb, cache,
                                     show_progress=cfg.show_progress)
    return CatalogFeatures(report.products, image, text, image_info, text_bb, report.summary())


def image_features(products: Sequence[Any], cfg: TrainConfig, tail: Any = None
                   ) -> tuple[np.ndarray, Any]:
    """(n, Di) cached image features of `products` from the config's image backbone (with a
    tuned `tail`, embedder.backbone_tail) and its BackboneInfo."""
    from embedder.backbones import load_backbone
    from embedder.bundle_config import BackboneInfo
    from embedder.features import FeatureCache, extract_image_features

    device = None if cfg.device == "auto" else cfg.device
    image_bb = load_backbone(cfg.image_backbone, device=device, tail=tail)
    with FeatureCache(cfg.cache_dir or None) as cache:
        image = extract_image_features(products, image_bb, cache,
                                       batch_size=cfg.feature_batch_size,
                                       num_workers=cfg.num_workers,
                                       show_progress=cfg.show_progress,
                                       model_calls=cfg.feature_model_calls)
    info = BackboneInfo(image_bb.spec, image_bb.dim, image_bb.engine,
                        tail.first_block if tail is not None else 0)
    return image, info


def with_tuned_image(feats: CatalogFeatures, cfg: TrainConfig, tail: Any) -> CatalogFeatures:
    """`feats` with the image features of the backbone with `tail` (embedder.backbone_tail),
    the packaged backbone's kept as `frozen_image` for the baselines."""
    image, info = image_features(feats.products, cfg, tail)
    return dataclasses.replace(feats, image=image, image_backbone=info, frozen_image=feats.image)


def ray_features(catalog: str | Path, cfg: TrainConfig, address: str | None = None,
                 out_shards: str | Path | None = None) -> Any:
    """The catalog's frozen features computed on Ray (embedder.ray_features) into feature
    shards, the feature cache filled as well; returns embedder.shards.FeatureShards."""
    from embedder.features import FeatureCache
    from embedder.ray_features import RayFeaturesConfig, extract_features_ray
    from train.streaming import default_shards_dir

    report = read_products(catalog, cfg)
    device = None if cfg.device == "auto" else cfg.device
    with FeatureCache(cfg.cache_dir or None) as cache:
        out = Path(out_shards) if out_shards else default_shards_dir(cache.root, catalog)
        return extract_features_ray(
            report.products, cfg.image_backbone, cfg.text_backbone, out, cache,
            RayFeaturesConfig(address=address, image_batch_size=cfg.feature_batch_size,
                              device=device, shard_size=cfg.streaming.shard_size))


def head_values(products: Sequence[Any], attribute_heads: Sequence[str]) -> dict[str, list]:
    """Every head's raw class name per product: category levels, then attribute columns."""
    from train.splits import attribute_values, level_heads

    values: dict[str, list] = dict(level_heads([p.category for p in products]))
    values.update(attribute_values([p.attributes for p in products], attribute_heads))
    return values


def leaf_head_name(values: dict[str, list]) -> str:
    """The deepest category level head."""
    levels = [h for h in values if h.startswith(LEVEL_PREFIX)]
    return max(levels, key=lambda h: int(h[len(LEVEL_PREFIX):]))


@dataclass
class LabeledFeatures:
    """One split, row-aligned: frozen backbone features and per-head label indices."""

    product_ids: list[str]
    titles: list[str]
    image: np.ndarray  # (n, Di) image-backbone features (tuned backbone when it was tuned)
    text: np.ndarray  # (n, Dt) frozen text-backbone features
    labels: dict[str, np.ndarray]  # head -> int64 (n,), -1 = not in the head's label space
    # Full category path per row ("A > B > C"). Optional: retrieval then knows the leaf class of
    # rare products too; without it, rows with leaf label -1 are skipped as queries.
    categories: list[str] | None = None
    # (n, Di) the packaged backbone's features when the image backbone was tuned (the frozen
    # baselines read `baseline_image`); None: `image` is already the frozen backbone's
    frozen_image: np.ndarray | None = None

    @property
    def baseline_image(self) -> np.ndarray:
        """The frozen image backbone's features: what the baselines run on."""
        return self.image if self.frozen_image is None else self.frozen_image

    def __post_init__(self) -> None:
        n = len(self.product_ids)
        sizes = {"titles": len(self.titles), "image": len(self.image), "text": len(self.text),
                 **{f"labels[{h}]": len(y) for h, y in self.labels.items()}}
        if self.categories is not None:
            sizes["categories"] = len(self.categories)
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"LabeledFeatures rows must all be {n} (product_ids), got {bad}")

    def __len__(self) -> int:
        return len(self.product_ids)


@dataclass(frozen=True)
class SplitData:
    """Features, the train/val/test row split and every head's labels, for the whole catalog."""

    feats: Any  # CatalogFeatures, or train.streaming.ShardedFeatures
    splits: Any  # train.splits.Splits
    y: dict[str, np.ndarray]  # head -> (n,) int64, -1 = outside the label space
    leaf: str
    # Streaming: the bounded samples of each split held in memory (train.streaming.held_rows)
    # for validation-time choices and evaluation; None = the whole splits.
    held: Any = None

    @property
    def used(self) -> Any:
        """The rows validation-time choices and evaluation use: `held`, else the splits."""
        return self.splits if self.held is None else self.held

    def rows(self, rows: np.ndarray) -> LabeledFeatures:
        f = self.feats
        image, text = f.take(rows)
        frozen = f.frozen_image
        return LabeledFeatures(
            product_ids=[f.products[i].id for i in rows],
            titles=[f.products[i].title for i in rows],
            image=image, text=text,
            labels={h: v[rows] for h, v in self.y.items()},
            categories=[f.products[i].category_path for i in rows],
            frozen_image=None if frozen is None else frozen[rows],
        )

    @property
    def train(self) -> LabeledFeatures:
        return self.rows(self.used.train)

    @property
    def val(self) -> LabeledFeatures | None:
        return self.rows(self.used.val) if len(self.used.val) else None

    @property
    def test(self) -> LabeledFeatures:
        return self.rows(self.used.test)


def split_catalog(feats: ProductFeatures, cfg: TrainConfig) -> tuple[dict[str, list], str, Any]:
    """(head values, leaf head, seeded stratified split by leaf class)."""
    from train.splits import stratified_split

    values = head_values(feats.products, cfg.attribute_heads)
    leaf = leaf_head_name(values)
    return values, leaf, stratified_split(values[leaf], cfg.val_frac, cfg.test_frac, cfg.seed)


def config_from_bundle(bundle: Any, **explicit: Any) -> TrainConfig:
    """The training config a bundle was trained with, as far as this code still knows it:
    keys that are unknown or no longer type-check are kept in the bundle as provenance and
    logged, not re-validated; `explicit` values (not None) go on top."""
    cfg, ignored = lenient_overrides(TrainConfig(), bundle.config.train_config)
    if ignored:
        logger.info("bundle training keys kept as provenance only: %s", sorted(ignored))
    return apply_overrides(cfg, {k: v for k, v in explicit.items() if v is not None})


def bundle_data(bundle: Any, catalog: str | Path, **explicit: Any) -> tuple[TrainConfig,
                                                                           SplitData]:
    """Features and splits of a catalog as the bundle's training run made them (same config,
    same seed: an unchanged catalog gives the same test split), labelled in the bundle's own
    label spaces."""
    cfg = config_from_bundle(bundle, **explicit)
    feats = load_features(catalog, cfg)
    if bundle.image_tail is not None:
        feats = with_tuned_image(feats, cfg, bundle.image_tail)
    values, _, splits = split_catalog(feats, cfg)
    y = {}
    for head in bundle.heads:
        index = {c: j for j, c in enumerate(bundle.labels[head])}
        y[head] = np.array([index.get(v, -1) for v in values[head]], dtype=np.int64)
    return cfg, SplitData(feats, splits, y, bundle.leaf_head)
