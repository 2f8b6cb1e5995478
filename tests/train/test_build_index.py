"""Index build from a saved bundle: every valid product, its metadata, the bundle fingerprint."""

import json

import numpy as np
import pytest

from embedder.bundle import Bundle
from index.errors import IndexMismatchError
from index.store import ProductIndex
from train.build_index import build_index, index_products
from train.pipeline import BUNDLE_DIR, INDEX_DIR


def test_build_index_from_bundle_and_catalog(trained_run, tmp_path):
    cfg, out = trained_run
    bundle = Bundle.load(out / BUNDLE_DIR)
    path = build_index(out / BUNDLE_DIR, cfg.catalog, tmp_path / "idx", factory="Flat",
                       modality="image", cache_dir=cfg.cache_dir)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["bundle_fingerprint"] == bundle.fingerprint
    assert manifest["build"]["recall_at_10"] == pytest.approx(1.0)  # Flat is exact
    image_only = ProductIndex.open(path, expected_fingerprint=bundle.fingerprint)
    fused = ProductIndex.open(out / INDEX_DIR, expected_fingerprint=bundle.fingerprint)
    try:
        assert len(image_only) == len(fused) > 0
        # the same product: image-only and fused vectors differ, records agree
        ids = [h.id for h in fused.search(np.ones((1, bundle.dim), np.float32), 5)[0]]
        for i in ids:
            assert image_only.get(i) == fused.get(i)
            assert not np.allclose(image_only.vector(i), fused.vector(i))
    finally:
        image_only.close()
        fused.close()
    with pytest.raises(IndexMismatchError):
        ProductIndex.open(path, expected_fingerprint="0" * 64)


def test_index_products_checks_row_counts(trained_run, tmp_path):
    _, out = trained_run
    bundle = Bundle.load(out / BUNDLE_DIR)
    with pytest.raises(ValueError, match="2 products, 1 image rows"):
        index_products(bundle, [object(), object()], np.zeros((1, 4)), np.zeros((2, 4)),
                       tmp_path)
    with pytest.raises(ValueError, match="modality"):
        index_products(bundle, [], np.zeros((0, 4)), np.zeros((0, 4)), tmp_path,
                       modality="audio")


def test_build_index_cli_bulk_loads_milvus_like_faiss(trained_run, milvus_lite_db):
    """`build-index --target milvus://...` (Milvus Lite here): the same products and search
    results as the FAISS index of the same bundle (recall@10 of the Milvus hits vs FAISS)."""
    from index.evaluation import recall_at_k
    from index.stores import open_product_index
    from train.huse import main

    cfg, out = trained_run
    uri = f"milvus-lite://{milvus_lite_db}?collection=cli_built"
    argv = ["build-index", "--bundle", str(out / BUNDLE_DIR), "--catalog", cfg.catalog,
            "--target", uri, "--cache-dir", cfg.cache_dir]
    assert main(argv) == 0
    fingerprint = Bundle.load(out / BUNDLE_DIR).fingerprint
    with open_product_index(out / INDEX_DIR, fingerprint) as faiss_ix, \
            open_product_index(uri, fingerprint) as milvus:
        assert len(milvus) == len(faiss_ix) and milvus.manifest["factory"] == "FLAT"
        ids = [p.id for p in milvus.search(np.ones((1, milvus.d), np.float32), len(milvus))[0]]
        xq = np.stack([faiss_ix.vector(i) for i in ids[:20]])
        want, got = faiss_ix.search(xq, 10), milvus.search(xq, 10)
        pos = {i: n for n, i in enumerate(ids)}
        ref = np.asarray([[pos[h.id] for h in row] for row in want])
        found = np.asarray([[pos[h.id] for h in row] for row in got])
        assert recall_at_k(found, ref, 10) >= 0.99
        assert got[0][0].record == want[0][0].record
