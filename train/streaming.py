"""Training from feature shards (embedder.shards) without the catalog's features in memory.

Past `streaming.min_products` valid products (train.config.StreamConfig) the pipeline never
holds an (n, D) feature array. What it keeps is O(n) metadata (products, titles, labels, row
indices); features are read from the shards one shard (or one shuffle buffer) at a time:

- training batches: per epoch the shard order is drawn from the trainer's seeded generator,
  the training rows (oversampled repeats included) of `shuffle_shards` shards at a time are
  shuffled together with that generator and cut into global batches (a batch may span two
  buffers); TF-IDF columns are computed per batch from the titles. Under DDP every rank reads
  the same buffers and keeps an equal slice of each global batch (train.distributed), so the
  gathered batch, the step count and a resume are the same as with one rank (disjoint shards
  per rank would read less, but give ranks unequal row counts, hence unequal step counts, and
  batches unlike one rank's). With one shard the batches are exactly the in-memory trainer's
  (same generator draws, same rows). Shards hold contiguous catalog rows, so a catalog sorted
  by category should be shuffled before it is sharded (or `shuffle_shards` raised): a buffer
  mixes only the classes of its shards;
- one pass over the shards for what sums over training rows: input standardisation
  (`Moments`, Chan's parallel mean/variance), class centroids, the index vectors;
- bounded seeded samples (`held_rows`) for what needs rows side by side: validation (early
  stopping, fusion weight, photo-search queries), the training rows the photo-search block
  and the baselines fit on, and the evaluated test rows.

Features come from shards given by `streaming.shards` (e.g. written by
`features --engine ray --out-shards DIR`), else the local path writes them from the feature
cache (CACHE/shards/<catalog name>, the Ray path's default too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import FeatureCacheError
from embedder.shards import FeatureShards
from train.data import ProductFeatures

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]  # image, text input, labels


def default_shards_dir(cache_root: Path, catalog: str | Path) -> Path:
    """Where shards of a catalog go without an explicit directory (Ray and local alike)."""
    return Path(cache_root) / "shards" / Path(catalog).stem


@dataclass(frozen=True)
class ShardedFeatures(ProductFeatures):
    """Valid products and the shards holding their frozen features (same rows, same order)."""

    products: list[Any]  # embedder.catalog.Product
    shards: FeatureShards
    image_backbone: Any  # embedder.bundle_config.BackboneInfo
    text_backbone: Any  # the loaded text backbone (it also embeds class names)
    catalog_summary: dict
    streamed = True

    def __post_init__(self) -> None:
        if len(self.shards) != len(self.products):
            raise FeatureCacheError(
                f"{self.shards.directory} holds features of {len(self.shards)} products, the "
                f"catalog has {len(self.products)} valid ones: write the shards of this "
                f"catalog (features --engine ray --out-shards DIR) or drop streaming.shards")

    @property
    def dims(self) -> tuple[int, int]:
        m = self.shards.manifest
        return int(m["image_backbone"]["dim"]), int(m["text_backbone"]["dim"])

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard i's image and text features, checked against the catalog's ids."""
        start, stop = self.shards.ranges[i]
        data = self.shards.read(i)
        if data.ids != [p.id for p in self.products[start:stop]]:
            raise FeatureCacheError(
                f"{self.shards.files[i]} holds other products than catalog rows "
                f"{start}-{stop}: the shards were written for another catalog")
        return data.image, data.text

    def chunks(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, image, text) shard by shard for sorted `rows` (shards without any skipped)."""
        rows = np.asarray(rows, dtype=np.int64)
        for i, (start, stop) in enumerate(self.shards.ranges):
            lo, hi = np.searchsorted(rows, [start, stop])
            if lo == hi:
                continue
            image, text = self.read(i)
            sel = rows[lo:hi]
            yield sel, image[sel - start], text[sel - start]

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image and text features of `rows` (any order): for bounded row sets only."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        di, dt = self.dims
        image = np.empty((len(rows), di), np.float32)
        text = np.empty((len(rows), dt), np.float32)
        done = 0
        for sel, img, txt in self.chunks(rows[order]):
            image[order[done:done + len(sel)]] = img
            text[order[done:done + len(sel)]] = txt
            done += len(sel)
        return image, text


def _backbone_entry(backbone: Any) -> dict[str, Any]:
    return {"spec": backbone.spec, "dim": backbone.dim, "namespace": backbone.cache_namespace,
            "engine": backbone.engine}


def write_local_shards(products: list[Any], image_bb: Any, text_bb: Any, out_dir: Path,
                       cfg: Any) -> FeatureShards:
    """Feature shards of `products` written shard by shard from the feature cache (misses
    computed and cached), never the whole array; a shard already there is kept (resume)."""
    from embedder.features import (
        FeatureCache,
        extract_image_features,
        extract_text_features,
        text_key,
    )
    from embedder.shards import (
        ShardData,
        plan_shards,
        shard_manifest,
        write_manifest,
        write_shard,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    backbones = {"image": _backbone_entry(image_bb), "text": _backbone_entry(text_bb)}
    ids = [p.id for p in products]
    image_keys = [p.image_sha256 for p in products]
    text_keys = [text_key(p.title) for p in products]
    namespaces = [backbones["image"]["namespace"], backbones["text"]["namespace"]]
    plan = plan_shards(ids, image_keys, text_keys, namespaces, cfg.streaming.shard_size)
    todo = [spec for spec in plan if not (out_dir / spec.file).is_file()]
    logger.info("%d products in %d feature shards (%s), %d to write", len(ids), len(plan),
                out_dir, len(todo))
    with FeatureCache(cfg.cache_dir or None) as cache:
        for spec in todo:
            part = products[spec.start:spec.stop]
            image = extract_image_features(part, image_bb, cache,
                                           batch_size=cfg.feature_batch_size,
                                           num_workers=cfg.num_workers,
                                           model_calls=cfg.feature_model_calls)
            text = extract_text_features([p.title for p in part], text_bb, cache)
            write_shard(out_dir / spec.file,
                        ShardData(ids[spec.start:spec.stop], image_keys[spec.start:spec.stop],
                                  text_keys[spec.start:spec.stop], image, text))
    write_manifest(out_dir, shard_manifest(len(ids), cfg.streaming.shard_size, backbones, plan))
    return FeatureShards(out_dir)


def _check_backbones(shards: FeatureShards, cfg: Any, image_tail: Any = None) -> None:
    """The shards' backbones are the config's, with `image_tail`'s weights when given (else
    their features mean something else)."""
    for kind, want in (("image", cfg.image_backbone), ("text", cfg.text_backbone)):
        have = shards.manifest[f"{kind}_backbone"]["spec"]
        if have != want:
            raise FeatureCacheError(f"{shards.directory} holds {kind} features of {have!r}, the "
                                    f"config asks for {want!r}: --set {kind}_backbone={have}")
    namespace = shards.manifest["image_backbone"].get("namespace", "")
    tuned = f"|tail={image_tail.weights_digest}" if image_tail is not None else "|tail="
    if (tuned in namespace) != (image_tail is not None):
        raise FeatureCacheError(f"{shards.directory} holds image features of another image "
                                f"backbone ({namespace}) than the bundle's")


def load_training_features(cfg: Any, rejects_path: Path | None = None,
                           image_tail: Any = None) -> Any:
    """The catalog's features for training: train.data.CatalogFeatures (in memory) up to
    `streaming.min_products` valid products, else ShardedFeatures. Shards come from
    `streaming.shards` when given (loaded whole when the catalog is small), else are written
    from the feature cache when streaming. `image_tail`: the image backbone's tuned tail
    (embedder.backbone_tail; a bundle's), else the packaged backbone."""
    from embedder.backbones import load_backbone
    from embedder.bundle_config import BackboneInfo
    from embedder.features import FeatureCache
    from train.data import CatalogFeatures, load_features, read_products

    report = read_products(cfg.catalog, cfg, rejects_path)
    s = cfg.streaming
    stream = len(report.products) > s.min_products
    if not stream and not s.shards:
        return load_features(cfg.catalog, cfg, report=report, image_tail=image_tail)
    device = None if cfg.device == "auto" else cfg.device
    text_bb = load_backbone(cfg.text_backbone, device=device)
    if s.shards:
        shards = FeatureShards(s.shards)
        _check_backbones(shards, cfg, image_tail)
        entry = shards.manifest["image_backbone"]
        image_info = BackboneInfo(entry["spec"], int(entry["dim"]), str(entry.get("engine", "")))
    else:
        image_bb = load_backbone(cfg.image_backbone, device=device, tail=image_tail)
        image_info = BackboneInfo(image_bb.spec, image_bb.dim, image_bb.engine,
                                  image_tail.first_block if image_tail is not None else 0)
        with FeatureCache(cfg.cache_dir or None) as cache:
            root = cache.root
        shards = write_local_shards(report.products, image_bb, text_bb,
                                    default_shards_dir(root, cfg.catalog), cfg)
        del image_bb
    feats = ShardedFeatures(report.products, shards, image_info, text_bb, report.summary())
    if stream:
        logger.info("streaming %d products from %d feature shards in %s (threshold %d)",
                    len(report.products), len(shards.files), shards.directory, s.min_products)
        return feats
    image, text = feats.take(np.arange(len(report.products)))
    return CatalogFeatures(report.products, image, text, image_info, text_bb, report.summary())


class Moments:
    """Per-column mean and variance over row chunks (Chan et al.'s parallel update, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        nb = len(x)
        if not nb:
            return
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        if self.m2 is None:
            raise ValueError("no rows")
        return np.sqrt(self.m2 / self.n)


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`rows` when at most `limit`, else a seeded sample of `limit` of them, sorted."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


def held_rows(splits: Any, cfg: Any) -> Any:
    """train.splits.Splits of the bounded samples streaming holds in memory (StreamConfig)."""
    from train.splits import Splits

    s = cfg.streaming
    return Splits(sample_rows(splits.train, s.max_train_sample, cfg.seed),
                  sample_rows(splits.val, s.max_val_rows, cfg.seed + 1),
                  sample_rows(splits.test, s.max_test_rows, cfg.seed + 2))


def tower_text_input(text: np.ndarray, titles: list[str], tfidf: Any) -> np.ndarray:
    """The text tower's input rows: backbone features [+ TF-IDF of the titles]."""
    if tfidf is None:
        return text
    return np.hstack([text, tfidf.transform(titles)]).astype(np.float32)


@dataclass
class ShardTrainData:
    """train.loop's batch source over feature shards (see the module docstring)."""

    feats: ShardedFeatures
    tfidf: Any  # embedder.tfidf.TfidfText | None
    y: dict[str, np.ndarray]  # head -> (n,) int64
    train_idx: np.ndarray  # rows per epoch (repeats when oversampling)
    val_idx: np.ndarray  # the held validation sample
    leaf_head: str
    A: np.ndarray
    shuffle_shards: int
    _val: Batch | None = field(default=None, repr=False)
    _shard_rows: list[np.ndarray] | None = field(default=None, repr=False)

    def _batch(self, rows: np.ndarray, image: np.ndarray, text: np.ndarray) -> Batch:
        titles = [self.feats.products[i].title for i in rows]
        return (image, tower_text_input(text, titles, self.tfidf),
                {h: y[rows] for h, y in self.y.items()})

    def _by_shard(self) -> list[np.ndarray]:
        """Each shard's training rows, in train_idx order (computed once: O(n) row indices)."""
        if self._shard_rows is None:
            starts = np.array([a for a, _ in self.feats.shards.ranges], dtype=np.int64)
            shard_of = np.searchsorted(starts, self.train_idx, side="right") - 1
            order = np.argsort(shard_of, kind="stable")
            bounds = np.searchsorted(shard_of[order], np.arange(len(starts) + 1))
            self._shard_rows = [self.train_idx[order[a:b]]
                                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return self._shard_rows

    def _buffers(self, gen: Any) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, image, text) of each shuffle buffer's training rows, shuffled."""
        import torch

        ranges = self.feats.shards.ranges
        by_shard = self._by_shard()
        order = (torch.randperm(len(ranges), generator=gen).numpy() if len(ranges) > 1
                 else np.zeros(1, dtype=np.int64))
        for g in range(0, len(order), self.shuffle_shards):
            group = [int(s) for s in order[g:g + self.shuffle_shards]]
            rows = np.concatenate([by_shard[s] for s in group])
            if not len(rows):
                continue
            rows = rows[torch.randperm(len(rows), generator=gen).numpy()]
            image = np.empty((len(rows), self.feats.dims[0]), np.float32)
            text = np.empty((len(rows), self.feats.dims[1]), np.float32)
            for s in group:
                start, stop = ranges[s]
                here = np.flatnonzero((rows >= start) & (rows < stop))
                if len(here):
                    img, txt = self.feats.read(s)
                    image[here] = img[rows[here] - start]
                    text[here] = txt[rows[here] - start]
            yield rows, image, text

    @property
    def n_train(self) -> int:
        return len(self.train_idx)

    def epoch(self, gen: Any, batch_size: int, rank: Any) -> Iterator[Batch]:
        """This rank's slice of each global batch of one epoch (see the module docstring)."""
        from train.distributed import local_rows

        di, dt = self.feats.dims
        left = (np.zeros(0, np.int64), np.zeros((0, di), np.float32), np.zeros((0, dt), np.float32))
        for part in self._buffers(gen):
            rows, image, text = (np.concatenate(c) for c in zip(left, part, strict=True))
            full = len(rows) // batch_size * batch_size
            for lo in range(0, full, batch_size):
                keep = lo + local_rows(np.arange(batch_size), rank)
                yield self._batch(rows[keep], image[keep], text[keep])
            left = (rows[full:], image[full:], text[full:])
        keep = local_rows(np.arange(len(left[0])), rank)
        if len(keep):  # the epoch's last, short batch (skipped when smaller than the world)
            yield self._batch(left[0][keep], left[1][keep], left[2][keep])

    def validation(self) -> Batch:
        """The held validation rows (read once)."""
        if self._val is None:
            image, text = self.feats.take(self.val_idx)
            self._val = self._batch(self.val_idx, image, text)
        return self._val
