"""What a shopper's photo search sees: seeded photo queries and the metrics of issue #11.

A photo query is a product's own image as a screenshot would give it: slightly cropped,
mirrored and JPEG re-encoded (`photo_query`). Searched against an index that holds every
product, it is scored by
- instance recall@1: the product itself comes back first;
- precision@k of the k nearest *other* products per column (leaf class, baseColour, usage...):
  the fraction of them that share the query product's value.
The functions here take ranked id lists, so the same code scores the HTTP API (bench), the
report (in-process vectors) and the CI test.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class PhotoQueryConfig:
    """How far a photo query is from the catalog image (per side crop fractions, JPEG quality)."""

    crop_min: float = 0.03  # each side loses a fraction drawn from [crop_min, crop_max]
    crop_max: float = 0.10
    mirror: bool = True
    jpeg_quality: tuple[int, int] = (70, 90)  # drawn uniformly, inclusive


def query_seed(product_id: str, seed: int) -> int:
    """A stable per-product seed (zlib.crc32 is the same in every process, unlike hash())."""
    return zlib.crc32(f"{seed}:{product_id}".encode())


def photo_query(image: Image.Image, seed: int,
                cfg: PhotoQueryConfig = PhotoQueryConfig()) -> bytes:
    """JPEG bytes of `image` cropped on each side, mirrored and re-encoded, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    w, h = image.size
    left, top, right, bottom = rng.uniform(cfg.crop_min, cfg.crop_max, size=4)
    box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
    out = image.convert("RGB").crop(box)
    if cfg.mirror:
        out = ImageOps.mirror(out)
    buf = io.BytesIO()
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    out.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def instance_recall_at_1(query_ids: Sequence[str], ranked: Sequence[Sequence[str]]) -> float:
    """Fraction of queries whose own product is the first hit."""
    if not query_ids:
        return float("nan")
    return float(np.mean([bool(r) and r[0] == q for q, r in zip(query_ids, ranked, strict=True)]))


def precision_at_k(query_ids: Sequence[str], ranked: Sequence[Sequence[str]],
                   values: Mapping[str, Mapping[str, str | None]], k: int = 10,
                   exclude_self: bool = True) -> dict[str, float]:
    """Per column of `values` ({column: {product id: value}}): the mean fraction of the first k
    hits (the query's own product skipped when exclude_self) sharing the query's value. Queries
    without a value in a column are skipped for it; a short hit list counts its gaps as misses."""
    out: dict[str, float] = {}
    for column, by_id in values.items():
        scores = []
        for q, hits in zip(query_ids, ranked, strict=True):
            want = by_id.get(q)
            if not want:
                continue
            others = [h for h in hits if not (exclude_self and h == q)][:k]
            scores.append(sum(by_id.get(h) == want for h in others) / k)
        out[column] = float(np.mean(scores)) if scores else float("nan")
    return out


def ranked_ids(scores: np.ndarray, ids: Sequence[str], k: int) -> list[list[str]]:
    """Ids of the k highest scores per row of a (n_queries, n_products) score matrix."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    return [[ids[j] for j in row] for row in top]


def photo_query_features(products: Sequence[Any], backbone: Any, cache: Any, seed: int,
                         cfg: PhotoQueryConfig = PhotoQueryConfig(),
                         batch_size: int = 32) -> np.ndarray:
    """(n, dim) image-backbone features of each product's photo query, through the feature
    cache (keyed by the image's content hash, the seed and the query config), so augmented views
    are computed once, like the catalog's features."""
    from embedder.images import load_image, sha256_bytes

    namespace = backbone.cache_namespace
    keys = [sha256_bytes(f"photo-query|{cfg}|{query_seed(p.id, seed)}|{p.image_sha256}".encode())
            for p in products]
    found = cache.get(namespace, backbone.dim, keys)
    todo = [(k, p) for k, p in zip(keys, products, strict=True) if k not in found]
    for lo in range(0, len(todo), batch_size):
        chunk = todo[lo:lo + batch_size]
        images = [load_image(photo_query(load_image(p.image_path), query_seed(p.id, seed), cfg))
                  for _, p in chunk]
        vectors = backbone.encode(images, batch_size=batch_size)
        cache.put(namespace, [k for k, _ in chunk], vectors)
        found.update(zip([k for k, _ in chunk], vectors, strict=True))
    return np.stack([found[k] for k in keys]) if keys else np.zeros((0, backbone.dim), np.float32)
