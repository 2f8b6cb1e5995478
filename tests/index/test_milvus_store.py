"""Milvus store specifics (the shared contract runs in test_store.py): URIs, builds that swap
the served collection, ids and categories that filters must quote, and search results equal to
the FAISS store's within recall@10 0.99."""

from __future__ import annotations

import numpy as np
import pytest
from index_testdata import make_records, make_vectors, unit

from index.build import build_product_index
from index.errors import IndexMismatchError, IndexStoreError, ProductNotFound
from index.evaluation import perturbed_queries, recall_at_k
from index.milvus_store import MilvusProductIndex
from index.milvus_target import MilvusPlan, milvus_index, parse_milvus_uri
from index.plan import BuildConfig
from index.store import ProductIndex, ProductRecord
from index.stores import open_product_index

D32 = 32


def lite_uri(db, name: str) -> str:
    return f"milvus-lite://{db}?collection={name}"


def test_milvus_uris():
    server = parse_milvus_uri("milvus://10.0.0.5:19530/products_v2")
    assert (server.client_uri, server.name, server.lite) == (
        "http://10.0.0.5:19530",
        "products_v2",
        False,
    )
    lite = parse_milvus_uri("milvus-lite:///tmp/x/huse.db?collection=shop")
    assert (lite.client_uri, lite.name, lite.lite) == ("/tmp/x/huse.db", "shop", True)
    assert parse_milvus_uri("milvus-lite:///tmp/h.db").name == "products"
    for bad in [
        "milvus://host/products",
        "milvus://host:1/",
        "milvus://h:1/bad-name",
        "milvus-lite:///tmp/file.sqlite",
        "http://h:1/x",
    ]:
        with pytest.raises(ValueError):
            parse_milvus_uri(bad)


def test_milvus_index_types():
    plan = MilvusPlan()
    assert milvus_index("auto", 10, plan) == ("FLAT", {})
    assert milvus_index("Flat", 10**6, plan) == ("FLAT", {})
    assert milvus_index("auto", 10**6, plan) == ("IVF_FLAT", {"nlist": 4096})
    assert milvus_index("IVF64,Flat", 10, plan) == ("IVF_FLAT", {"nlist": 64})
    with pytest.raises(ValueError, match="HNSW32"):
        milvus_index("HNSW32", 10, plan)


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 30 centres, like product embeddings (IVF has structure to use)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, D32))
    return unit(centres[rng.integers(0, 30, n)] + 0.35 * rng.normal(size=(n, D32)))


def overlap_at_10(a: list, b: list) -> float:
    """recall@10 of one store's hit ids against another's."""
    ids = {h.id: i for i, h in enumerate({h.id: h for row in b for h in row}.values())}
    ref = np.asarray([[ids[h.id] for h in row] for row in b])
    got = np.asarray([[ids.get(h.id, -1) for h in row] + [-1] * (10 - len(row)) for row in a])
    return recall_at_k(got, ref, 10)


def test_milvus_build_matches_faiss_and_swaps_on_rebuild(milvus_lite_db, tmp_path):
    n = 3000
    xb, records = clustered(n), make_records(n)
    build_product_index(tmp_path / "ix", records, xb, "fp-1", factory="Flat")
    uri = lite_uri(milvus_lite_db, "built")
    tuned = BuildConfig(target_recall=0.99, timed_queries=20)  # Lite is slow per query
    manifest = build_product_index(uri, records, xb, "fp-1", factory="IVF_FLAT", config=tuned)
    assert manifest["factory"] == "IVF_FLAT" and manifest["ntotal"] == n
    assert manifest["build"]["recall_at_10"] >= 0.95
    xq = perturbed_queries(xb, 200, noise=0.6, seed=1)  # near products, as real queries
    with ProductIndex.open(tmp_path / "ix") as faiss_ix, open_product_index(uri, "fp-1") as mil:
        assert mil.search_effort == manifest["search_effort"]  # the tuned nprobe was saved
        assert overlap_at_10(mil.search(xq, 10), faiss_ix.search(xq, 10)) >= 0.99
        for prefix in ("Footwear", "Footwear > Boots", "Apparel"):
            got, want = mil.search(xq, 10, prefix), faiss_ix.search(xq, 10, prefix)
            assert overlap_at_10(got, want) >= 0.99
        first = mil.collection
    with pytest.raises(IndexStoreError, match="already holds"):
        build_product_index(uri, records[:50], xb[:50], "fp-2")
    build_product_index(uri, records[:50], xb[:50], "fp-2", overwrite=True)
    with open_product_index(uri, "fp-2") as again:
        assert len(again) == 50 and again.collection != first and again.factory == "FLAT"
        assert not again._client.has_collection(first)  # the replaced collection is gone


def test_ids_and_categories_that_filters_must_quote(milvus_lite_db):
    uri = lite_uri(milvus_lite_db, "quoting")
    ids = ['a"b', "c\\d", "é ü 日本", "it's", "x\ny", "pct%_", '\\"', "p1"]
    cats = ['Shoes "best"', "A\\B > C", "日本 > 靴", "It's > x", "A > B", "%", "_", "A"]
    records = [
        ProductRecord(i, f"t{i}", c, f"img/{j}.jpg", {})
        for j, (i, c) in enumerate(zip(ids, cats, strict=True))
    ]
    xb = make_vectors(len(ids))
    with MilvusProductIndex.create(uri, d=xb.shape[1], bundle_fingerprint="fp") as store:
        store.upsert(records, xb)
        for record in records:
            assert store.get(record.id) == record.validated()
            assert store.image_in_use(record.image)
            c = record.validated().category
            below = {
                r.id
                for r, rc in zip(records, cats, strict=True)
                if rc == c or rc.startswith(c + " > ")
            }
            hits = store.search(xb, len(ids), category_prefix=record.category)
            assert {h.id for row in hits for h in row} == below
        assert {h.id for h in store.search(xb, 8, category_prefix="A")[0]} == {"x\ny", "p1"}
        hits = store.search(xb, len(ids), exclude_ids=ids[:4])
        assert all(h.id not in ids[:4] for row in hits for h in row)
        with pytest.raises(ValueError, match="control characters"):
            store.upsert([ProductRecord("bad\x01id", "t", "A", "", {})], make_vectors(1))
        with pytest.raises(ProductNotFound):
            store.get("bad\x01id")
        store.delete(ids[:3])
        assert len(store) == len(ids) - 3
        assert not store.image_in_use("img/0.jpg") and not store.image_in_use("x\x01")


def test_a_plain_collection_is_not_taken_over(milvus_lite_db):
    from pymilvus import MilvusClient

    client = MilvusClient(str(milvus_lite_db))
    client.create_collection("plain", dimension=4)
    uri = lite_uri(milvus_lite_db, "plain")
    with pytest.raises(IndexMismatchError, match="not a huse-index-milvus"):
        open_product_index(uri)
    xb = make_vectors(5)
    with pytest.raises(IndexMismatchError, match="plain collection"):
        build_product_index(uri, make_records(5), xb, "fp", overwrite=True)
    assert not any(n.startswith("plain__") for n in client.list_collections())  # discarded
    with pytest.raises(IndexStoreError, match="holds no index"):
        open_product_index(lite_uri(milvus_lite_db, "missing"))
