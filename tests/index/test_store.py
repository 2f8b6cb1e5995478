"""The store contract (search with metadata, mutations, filters, bad input, fingerprints,
reopening, concurrent writes) on every implementation through one parametrised fixture
(`store_backend`: FAISS + SQLite, and Milvus Lite); then the FAISS store's own persistence,
corruption and crash tests."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from index_testdata import CATEGORIES, D, brute_force, make_records, make_vectors

from index.errors import CorruptIndexError, IndexMismatchError, IndexStoreError, ProductNotFound
from index.metadata import ProductFilter
from index.plan import IndexPlan
from index.store import ProductIndex, ProductRecord

N = 400
REPO = Path(__file__).resolve().parents[2]


def category_matches(category: str, prefix: str) -> bool:
    return category == prefix or category.startswith(prefix + " > ")


@pytest.fixture
def store(store_backend):
    """N products in each store implementation in turn."""
    s = store_backend.create(d=D, bundle_fingerprint="fp-1")
    s.upsert(make_records(N), make_vectors(N))
    yield s
    s.close()


@pytest.fixture
def faiss_store(tmp_path):
    """N products in the FAISS store, for its file-level persistence tests."""
    s = ProductIndex.create(tmp_path / "ix", d=D, bundle_fingerprint="fp-1", factory="Flat")
    s.upsert(make_records(N), make_vectors(N))
    yield s
    s.close()


def test_search_matches_brute_force_with_metadata(store, xq):
    xb, records = make_vectors(N), make_records(N)
    hits = store.search(xq, 5)
    D_ref, I_ref = brute_force(xq, xb, 5)
    assert [[h.id for h in row] for row in hits] == [[records[i].id for i in r] for r in I_ref]
    np.testing.assert_allclose([[h.score for h in row] for row in hits], D_ref, atol=1e-5)
    assert hits[0][0].record == records[I_ref[0, 0]]
    assert store.get("p7") == records[7] and len(store) == N
    np.testing.assert_array_equal(store.vector("p7"), xb[7])


def test_upsert_and_delete_semantics(store):
    new_vec = make_vectors(1, seed=5)
    store.upsert([ProductRecord("p1", "renamed", "Apparel>Tops", "x.jpg", {"c": "red"})], new_vec)
    assert store.get("p1").title == "renamed" and store.get("p1").category == "Apparel > Tops"
    assert store.search(new_vec, 1)[0][0].id == "p1"
    np.testing.assert_allclose(store.vector("p1"), new_vec[0], atol=1e-6)  # the latest write
    store.delete(["p2", "p3"])
    assert len(store) == N - 2
    for read in (store.get, store.vector):  # a deleted product is gone for both reads
        with pytest.raises(ProductNotFound) as err:
            read("p2")
        assert err.value.product_id == "p2"
    with pytest.raises(ProductNotFound):
        store.delete(["p4", "p2"])  # p2 is gone: nothing deleted, p4 survives
    assert store.get("p4").id == "p4"
    assert all(h.id not in {"p2", "p3"} for row in store.search(make_vectors(50), 20) for h in row)
    store.upsert(make_records(1, start=2), make_vectors(1, seed=6))  # re-adding a deleted id
    assert len(store) == N - 1 and store.get("p2").title == "title 2"


def test_search_hits_show_the_latest_write(store):
    """A hit's record is the one last written, after searches have read (and cached) it."""
    xb = make_vectors(N)
    assert store.search(xb[1], 1)[0][0].record.title == "title 1"
    store.upsert([ProductRecord("p1", "renamed", "Bags", "y.jpg", {"c": "blue"})], xb[1:2])
    hit = store.search(xb[1], 1)[0][0]
    assert (hit.id, hit.record.title, hit.record.attributes) == ("p1", "renamed", {"c": "blue"})
    store.delete(["p1"])
    store.upsert([ProductRecord("p1", "back again", "Bags")], xb[1:2])
    assert store.search(xb[1], 1)[0][0].record.title == "back again"


def test_category_prefix_on_whole_levels_returns_k(store, xq):
    hits = store.search(xq, 10, category_prefix="Footwear")
    for row in hits:
        assert len(row) == 10
        assert all(category_matches(h.record.category, "Footwear") for h in row)
    assert all(
        h.record.category == "Footwearables"
        for row in store.search(xq, 10, category_prefix="Footwearables")
        for h in row
    )
    winter = store.search(xq, 200, category_prefix=" Footwear>Boots ")
    assert all(len(row) == N // 4 for row in winter)  # fewer match than k: all of them
    assert store.search(xq, 5, category_prefix="Garden") == [[] for _ in xq]


def test_where_page_categories_and_facets(store, xq):
    where = ProductFilter(("Footwear",), (("i", "5"),))
    assert [[h.id for h in row] for row in store.search(xq[:2], 5, where=where)] == [["p5"]] * 2
    assert store.search(xq[:1], 5, where=ProductFilter(())) == [[]]
    assert store.categories() == sorted(set(CATEGORIES))
    categories, attributes = store.facet_counts()
    assert categories == {c: N // len(CATEGORIES) for c in CATEGORIES}
    assert attributes == {"i": {str(i): 1 for i in range(N)}}
    seen, after = [], -1
    while page := store.page(after, 64, ProductFilter(("Apparel",))):
        keys = [key for key, _ in page]
        assert keys == sorted(keys) and keys[0] > after
        seen += [record.id for _, record in page]
        after = keys[-1]
    assert sorted(seen) == sorted(f"p{i}" for i in range(3, N, 4))  # every Apparel once


def test_exclude_ids(store, xq):
    first = [row[0].id for row in store.search(xq, 1)]
    hits = store.search(xq, 3, exclude_ids=first + ["unknown"])
    assert all(len(row) == 3 and row[0].id != f for row, f in zip(hits, first, strict=True))


BAD_UPSERTS = {
    "wrong dimension": lambda: (make_records(2, 900), make_vectors(2, d=D + 1)),
    "nan": lambda: (make_records(2, 900), np.full((2, D), np.nan, np.float32)),
    "inf": lambda: (make_records(2, 900), np.full((2, D), np.inf, np.float32)),
    "zero": lambda: (make_records(2, 900), np.zeros((2, D), np.float32)),
    "not normalised": lambda: (make_records(2, 900), 2 * make_vectors(2)),
    "duplicate ids": lambda: (make_records(1, 900) * 2, make_vectors(2)),
    "count mismatch": lambda: (make_records(3, 900), make_vectors(2)),
    "empty category level": lambda: (
        [ProductRecord("q", "t", "A >  > B", "", {})],
        make_vectors(1),
    ),
}


@pytest.mark.parametrize("name", BAD_UPSERTS)
def test_bad_input_raises_and_changes_nothing(store, xq, name):
    before = store.search(xq, 5)
    records, xb = BAD_UPSERTS[name]()
    with pytest.raises((ValueError, TypeError)):
        store.upsert(records, xb)
    assert len(store) == N and store.search(xq, 5) == before
    for record in records:
        with pytest.raises(ProductNotFound):
            store.get(record.id)


def test_untrainable_first_batch_changes_nothing(tmp_path):
    s = ProductIndex.create(tmp_path / "ix", d=D, bundle_fingerprint="fp", factory="IVF64,Flat")
    with pytest.raises(ValueError, match="IVF64,Flat"):
        s.upsert(make_records(10), make_vectors(10))  # too few vectors to train 64 lists
    assert len(s) == 0 and s._meta.generation() == 0 and s._meta.live_count() == 0
    s.upsert(make_records(N * 8), make_vectors(N * 8))
    assert len(s) == N * 8
    s.close()


def test_bad_queries_and_ids(store):
    for xq, k in [(np.zeros((1, D)), 3), (np.ones((1, D + 2)), 3), (make_vectors(1), 0)]:
        with pytest.raises(ValueError):
            store.search(xq, k)
    with pytest.raises(ValueError, match="k must be in"):
        store.search(make_vectors(1), 10**9)
    with pytest.raises(ValueError, match="duplicate"):
        store.delete(["p1", "p1"])
    with pytest.raises(TypeError):
        store.delete("p1")
    assert len(store) == N


def test_fingerprint_and_existing_index_are_checked(store_backend):
    store_backend.create(d=D, bundle_fingerprint="fp-1").close()
    with pytest.raises(IndexMismatchError, match="fp-1"):
        store_backend.open(expected_fingerprint="other")
    with pytest.raises(IndexStoreError, match="already holds"):
        store_backend.create(d=D, bundle_fingerprint="fp-1")
    with store_backend.open(expected_fingerprint="fp-1") as again:
        assert len(again) == 0 and again.manifest["bundle_fingerprint"] == "fp-1"


def test_reopen_keeps_every_write(store_backend):
    s = store_backend.create(d=D, bundle_fingerprint="fp-1")
    s.upsert(make_records(N), make_vectors(N))
    s.save()
    s.upsert(make_records(5, start=N), make_vectors(5, seed=3))
    s.delete(["p0", "p1"])
    s.close()
    with store_backend.open(expected_fingerprint="fp-1") as again:
        assert len(again) == N + 3
        assert again.search(make_vectors(5, seed=3)[:1], 1)[0][0].id == f"p{N}"
        np.testing.assert_allclose(again.vector("p9"), make_vectors(N)[9], atol=1e-6)
        with pytest.raises(ProductNotFound):
            again.get("p0")
        again.delete(["p5"])
        assert len(again) == N + 2


@pytest.mark.parametrize("factory", ["Flat", "SQfp16", "HNSW16", "IVF4,Flat"])
def test_reopen_replays_writes_after_snapshot(tmp_path, factory):
    s = ProductIndex.create(tmp_path / "ix", d=D, bundle_fingerprint="fp-1", factory=factory)
    s.upsert(make_records(N), make_vectors(N))
    s.save()
    s.upsert(make_records(5, start=N), make_vectors(5, seed=3))  # after the snapshot
    s.delete(["p0", "p1"])
    s.close()
    again = ProductIndex.open(tmp_path / "ix", expected_fingerprint="fp-1")
    assert len(again) == N + 3 and again.manifest["factory"] == factory
    assert again.search(make_vectors(5, seed=3)[:1], 1)[0][0].id == f"p{N}"
    with pytest.raises(ProductNotFound):
        again.get("p0")
    again.delete(["p5"])  # the loaded snapshot still supports every mutation
    again.upsert(make_records(1, start=6), make_vectors(1, seed=8))
    assert again.search(make_vectors(1, seed=8), 1)[0][0].id == "p6" and len(again) == N + 2
    again.close()


def test_manifest_records_snapshot(faiss_store, tmp_path):
    manifest = faiss_store.save()
    snap = tmp_path / "ix" / manifest["snapshot"]["file"]
    assert manifest["ntotal"] == N and manifest["d"] == D and manifest["generation"] == 1
    assert manifest["bundle_fingerprint"] == "fp-1" and snap.stat().st_size > 0
    assert json.loads((tmp_path / "ix" / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in snap.parent.glob("vectors*")) == [snap.name]


def test_mismatches_are_refused(faiss_store, tmp_path):
    faiss_store.save()
    faiss_store.close()
    ix = tmp_path / "ix"
    with pytest.raises(IndexMismatchError, match="fp-1"):
        ProductIndex.open(ix, expected_fingerprint="other")
    manifest = json.loads((ix / "manifest.json").read_text())
    (ix / "manifest.json").write_text(json.dumps({**manifest, "d": D + 1}))
    with pytest.raises(IndexMismatchError, match="d="):
        ProductIndex.open(ix)
    (ix / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(IndexMismatchError, match="not a huse-index"):
        ProductIndex.open(ix)
    (ix / "manifest.json").write_text('{"format": "huse-')
    with pytest.raises(CorruptIndexError, match="JSON"):
        ProductIndex.open(ix)
    with pytest.raises(IndexStoreError, match="not an index directory"):
        ProductIndex.open(tmp_path)
    with pytest.raises(IndexStoreError, match="already holds"):
        ProductIndex.create(ix, d=D, bundle_fingerprint="fp-1")


def test_foreign_sqlite_is_refused(faiss_store, tmp_path):
    faiss_store.save()
    faiss_store.close()
    db = tmp_path / "ix" / "meta.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(CorruptIndexError, match="SQLite"):
        ProductIndex.open(tmp_path / "ix")


def test_truncated_snapshot_is_rebuilt_from_sqlite(faiss_store, tmp_path, caplog):
    manifest = faiss_store.save()
    faiss_store.close()
    snap = tmp_path / "ix" / manifest["snapshot"]["file"]
    snap.write_bytes(snap.read_bytes()[: snap.stat().st_size // 2])
    with pytest.raises(CorruptIndexError, match="checksum"):
        ProductIndex.open(tmp_path / "ix", rebuild_if_corrupt=False)
    with caplog.at_level(logging.WARNING, logger="index.store"):
        again = ProductIndex.open(tmp_path / "ix")
    assert "rebuilding" in caplog.text and len(again) == N
    assert again.search(make_vectors(N)[:1], 1)[0][0].id == "p0"
    again.close()


def test_searches_see_whole_writes_while_a_writer_runs(store_backend):
    if store_backend.name == "faiss":  # HNSW with frequent rebuilds: the hardest FAISS case
        store_backend.factory = "HNSW16"
        store_backend.plan = IndexPlan(tombstone_rebuild_fraction=0.05)
    s = store_backend.create(d=D, bundle_fingerprint="fp")
    s.upsert(make_records(N), make_vectors(N))
    stop, errors = threading.Event(), []

    def writer():
        for rnd in range(20):
            ids = [f"p{i}" for i in range(rnd * 10, rnd * 10 + 10)]
            xb = make_vectors(10, seed=100 + rnd)
            s.upsert([ProductRecord(i, f"v{rnd}", "Apparel", "", {"round": rnd}) for i in ids], xb)
            s.delete(ids[:2])
            if rnd % 5 == 4:
                s.save()  # snapshots run beside searches
        stop.set()

    originals = make_vectors(N)

    def reader():
        xq = make_vectors(8, seed=7)
        while not stop.is_set():
            for q, row in zip(xq, s.search(xq, 10), strict=True):
                for h in row:
                    # the score comes from FAISS, the record from SQLite: they must be one write
                    i = int(h.id[1:])
                    if h.record.title.startswith("v"):
                        rnd = h.record.attributes["round"]
                        expected = make_vectors(10, seed=100 + rnd)[i - rnd * 10]
                    else:
                        expected = originals[i]
                    if abs(h.score - float(q @ expected)) > 1e-4:
                        errors.append((h.id, h.score, float(q @ expected)))

    threads = [threading.Thread(target=reader) for _ in range(3)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(s) == N - 40
    s.close()
    with store_backend.open() as again:
        assert len(again) == N - 40 and again.get("p199").attributes == {"round": 19}


CHILD = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from index_testdata import make_records, make_vectors
import huse_common.atomic
from index.store import ProductIndex

store = ProductIndex.open({ix!r})
store.upsert(make_records(7, start=1000), make_vectors(7, seed=11))  # durable before save
real = getattr(huse_common.atomic.os, {func!r})
def die(*args):
    if {target!r} in str(args[-1] if {func!r} == "replace" else "") or {func!r} == "fsync":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
setattr(huse_common.atomic.os, {func!r}, die)
store.save()
"""


@pytest.mark.parametrize(
    ("func", "target"),
    [("fsync", ""), ("replace", ".faiss"), ("replace", "manifest.json")],
)
def test_sigkill_during_save_keeps_previous_index(faiss_store, tmp_path, func, target):
    faiss_store.save()
    faiss_store.close()
    ix = tmp_path / "ix"
    code = CHILD.format(tests=str(Path(__file__).parent), ix=str(ix), func=func, target=target)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    again = ProductIndex.open(ix, rebuild_if_corrupt=False)  # previous snapshot verifies
    assert len(again) == N + 7  # the upsert made before the crash was replayed from SQLite
    assert again.get("p1006").title == "title 1006"
    again.close()


def test_reads_that_must_not_wait_raise_index_busy_during_a_write(faiss_store):
    """wait=False (the API's event loop) gets IndexBusy instead of waiting for a writer."""
    import threading

    from index.errors import IndexBusy

    xq = make_vectors(1, seed=2)
    assert faiss_store.search(xq, 1, wait=False)[0]  # no writer: answers now
    holding, release = threading.Event(), threading.Event()

    def write() -> None:
        with faiss_store._lock.write():
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert holding.wait(10)
        with pytest.raises(IndexBusy):
            faiss_store.search(xq, 1, wait=False)
        with pytest.raises(IndexBusy):
            faiss_store.vector("p0", wait=False)
    finally:
        release.set()
        writer.join(10)
    assert faiss_store.vector("p0", wait=False).shape == (D,)
