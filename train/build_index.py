"""Offline index build: every valid catalog product embedded with a bundle, written with its
metadata to an index directory (index.store), recall@10 of the chosen index type vs exact
search recorded in the manifest by `index.build.build_product_index`.

Products are embedded from cached frozen features, fused (image + title) by default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODALITIES = ("fused", "image", "text")


# Catalog images are adopted into the model directory (beside bundle/ and index/, the API's
# media root), so it can be copied to another path or machine without the catalog. Apart from
# the uploads dir: the API only ever deletes uploads, never catalog images.
MEDIA_DIRNAME = "catalog_images"


def adopt_image(src: str | Path, media_root: Path) -> str:
    """Content-addressed copy of a catalog image under media_root/catalog_images (a hard link where
    the filesystem allows, else an atomic copy); returns its path relative to media_root."""
    from embedder.images import sha256_bytes
    from huse_common.atomic import write_atomic

    data = Path(src).read_bytes()
    target = media_root / MEDIA_DIRNAME / f"{sha256_bytes(data)}{Path(src).suffix.lower()}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except FileExistsError:
            pass
        except OSError:  # another filesystem, or links not allowed
            write_atomic(target, data)
    return target.relative_to(media_root).as_posix()


def product_records(products: Sequence[Any], media_root: Path | None) -> list[Any]:
    """index.store.ProductRecord per product: id, title, ' > '-joined category, image path
    relative to media_root (see adopt_image; absolute when there is none, e.g. Milvus),
    attributes."""
    from index.store import ProductRecord

    return [ProductRecord(id=p.id, title=p.title, category=p.category_path,
                          image=adopt_image(p.image_path, media_root) if media_root
                          else str(Path(p.image_path).resolve()),
                          attributes=dict(p.attributes))
            for p in products]


def index_products(bundle: Any, products: Sequence[Any], image_feats: np.ndarray,
                   text_feats: np.ndarray, out_dir: str | Path, factory: str = "auto",
                   modality: str = "fused", plan: Any = None, build: Any = None) -> dict:
    """Embed products from their frozen features with `bundle`, build the index at out_dir;
    returns the index manifest (recall@10 vs exact included)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not len(products) == len(image_feats) == len(text_feats):
        raise ValueError(f"{len(products)} products, {len(image_feats)} image rows, "
                         f"{len(text_feats)} text rows")
    titles = [p.title for p in products]
    xb = bundle.index_vectors(
        image_feats=image_feats if modality in ("fused", "image") else None,
        text_feats=text_feats if modality in ("fused", "text") else None,
        titles=titles,
    )
    return write_index(bundle, products, xb, out_dir, factory, plan, build)


def streamed_index_vectors(bundle: Any, feats: Any, modality: str = "fused") -> np.ndarray:
    """(n, index_dim) index rows of every product, embedded shard by shard from
    train.streaming.ShardedFeatures (the features are never held whole)."""
    titles = feats.titles
    xb = np.empty((len(feats.products), bundle.index_dim), np.float32)
    for rows, image, text in feats.chunks(np.arange(len(feats.products))):
        xb[rows] = bundle.index_vectors(image if modality in ("fused", "image") else None,
                                        text if modality in ("fused", "text") else None,
                                        [titles[i] for i in rows])
    return xb


def write_index(bundle: Any, products: Sequence[Any], xb: np.ndarray, out_dir: str | Path,
                factory: str = "auto", plan: Any = None, build: Any = None) -> dict:
    """The index of `products` with their index vectors `xb` (rows aligned) at out_dir (a
    directory or a Milvus URI); returns its manifest."""
    from index.build import build_product_index
    from index.milvus_target import is_milvus_uri
    from index.plan import BuildConfig

    out = out_dir if is_milvus_uri(out_dir) else Path(out_dir)
    # overwrite: a rebuild is built beside the old index and swapped in only once saved.
    # The media root: the FAISS index's parent, as the API resolves it; for a Milvus target
    # the bundle's parent (the model dir), else none (absolute paths).
    root = out.resolve().parent if isinstance(out, Path) else None
    if root is None and getattr(bundle, "path", None):
        root = Path(bundle.path).resolve().parent
    records = product_records(products, root)
    config = build or BuildConfig()
    rows = np.random.default_rng(config.seed).choice(
        len(xb), size=min(config.n_eval_queries, len(xb)), replace=False)
    manifest = build_product_index(out, records, xb, bundle.fingerprint,
                                   factory=factory, plan=plan, config=config, overwrite=True,
                                   query_sets=bundle.served_probe_queries(xb[np.sort(rows)]),
                                   prefix_dims=bundle.served_prefix_dims)
    logger.info("index of %d products written to %s", len(products), out)
    return manifest


def build_index(bundle_dir: str | Path, catalog: str | Path, out_dir: str | Path,
                factory: str | None = None, modality: str = "fused",
                cache_dir: str | None = None, show_progress: bool = False) -> str | Path:
    """Read the catalog, extract (cached) features with the bundle's backbones (its tuned image
    tail included), build the index
    in a directory or a Milvus collection (`milvus://host:port/name`, bulk-loaded). factory
    None = the bundle's training config `index_factory` (a FAISS one: Milvus chooses 'auto').
    Past the training config's `streaming.min_products` the features are streamed from
    feature shards of this catalog (train.streaming), as training reads them."""
    import dataclasses

    from embedder.bundle import Bundle
    from index.milvus_target import is_milvus_uri
    from train.data import config_from_bundle
    from train.streaming import load_training_features

    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    bundle = Bundle.load(bundle_dir)
    cfg = config_from_bundle(bundle, show_progress=show_progress, cache_dir=cache_dir)
    # this catalog's features: not the training run's shard directory
    cfg = dataclasses.replace(cfg, catalog=str(catalog),
                              streaming=dataclasses.replace(cfg.streaming, shards=""))
    feats = load_training_features(cfg, image_tail=bundle.image_tail)
    milvus = is_milvus_uri(out_dir)
    factory = factory or ("auto" if milvus else cfg.index_factory)
    if feats.streamed:
        write_index(bundle, feats.products, streamed_index_vectors(bundle, feats, modality),
                    out_dir, factory, plan=cfg.index_plan, build=cfg.index_build)
    else:
        index_products(bundle, feats.products, feats.image, feats.text, out_dir,
                       factory=factory, modality=modality, plan=cfg.index_plan,
                       build=cfg.index_build)
    return out_dir if milvus else Path(out_dir)
