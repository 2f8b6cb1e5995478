"""MetadataStore: categories on whole levels, stable never-reused keys, generations."""

from __future__ import annotations

import numpy as np
import pytest
from index_testdata import D, make_records, make_vectors

from index.errors import IndexMismatchError, ProductNotFound
from index.metadata import MetadataStore, ProductRecord, RecordCache, normalize_category


@pytest.fixture
def meta(tmp_path):
    m = MetadataStore.create(tmp_path / "m.sqlite", D, "fp", "Flat", None)
    yield m
    m.close()


def test_normalize_category():
    assert normalize_category(" A>B >  C ") == "A > B > C"
    with pytest.raises(ValueError, match="empty level"):
        normalize_category("A > > B")
    with pytest.raises(TypeError):
        normalize_category(None)


def test_prefix_matches_whole_levels(meta):
    records = [r.validated() for r in make_records(8)]
    keys, _ = meta.upsert(records, make_vectors(8))
    footwear = meta.keys_with_category_prefix("Footwear")
    expected = [
        k
        for k, r in zip(keys, records, strict=True)
        if r.category != "Footwearables" and r.category.startswith("Footwear")
    ]
    np.testing.assert_array_equal(footwear, sorted(expected))
    assert len(meta.keys_with_category_prefix("Footwearables")) == 2
    assert len(meta.keys_with_category_prefix("Footwear > Boots")) == 2


def test_keys_are_stable_and_never_reused(meta):
    records = [r.validated() for r in make_records(3)]
    keys, gen1 = meta.upsert(records, make_vectors(3))
    again, gen2 = meta.upsert(records[:1], make_vectors(1, seed=4))
    assert again[0] == keys[0] and gen2 == gen1 + 1
    deleted, gen3 = meta.delete(["p2"])
    new, _ = meta.upsert([r.validated() for r in make_records(1, start=9)], make_vectors(1))
    assert new[0] > keys.max()  # AUTOINCREMENT: the deleted key is not handed out again
    up, xb, gone = meta.changes_since(gen2)
    assert gone.tolist() == deleted.tolist() and up.tolist() == new.tolist()
    np.testing.assert_array_equal(meta.vectors(keys[:1]), make_vectors(1, seed=4))
    assert meta.live_count() == 3 and gen3 == gen2 + 1
    with pytest.raises(ProductNotFound):
        meta.get("p2")


def test_foreign_sqlite_is_a_mismatch(tmp_path):
    import sqlite3

    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(IndexMismatchError, match="not an index store"):
        MetadataStore.open(path)


def test_facet_counts_cover_live_products_only(meta):
    from index.metadata import ProductRecord

    records = [
        ProductRecord("a", "t", "Shoes > Boots", attributes={"colour": "red", "size": 42}),
        ProductRecord("b", "t", "Shoes > Boots", attributes={"colour": "red", "extra": {"x": 1}}),
        ProductRecord("c", "t", "Shoes > Sneakers", attributes={"colour": "blue"}),
        ProductRecord("d", "t", "Bags", attributes={"colour": "blue", "size": None}),
    ]
    meta.upsert([r.validated() for r in records], make_vectors(4))
    meta.delete(["d"])
    categories, attributes = meta.facet_counts()
    assert categories == {"Shoes > Boots": 2, "Shoes > Sneakers": 1}
    assert attributes == {"colour": {"red": 2, "blue": 1}, "size": {"42": 1}}


def test_record_cache_stays_true_under_writes(meta):
    """Hit records come from the cache once read; every write path replaces what it holds."""
    records = [r.validated() for r in make_records(3)]
    keys, _ = meta.upsert(records, make_vectors(3))
    first = meta.records(keys.tolist())
    assert len(meta.cache) == 3 and meta.records(keys.tolist()) == first
    renamed = ProductRecord("p0", "renamed", "Bags", "x.jpg", {"colour": "red"}).validated()
    meta.upsert([renamed], make_vectors(1, seed=5))
    assert meta.records([int(keys[0])])[int(keys[0])] == renamed
    meta.delete(["p1"])
    meta.upsert([ProductRecord("p1", "back", "Bags").validated()], make_vectors(1, seed=6))
    assert meta.records([int(keys[1])])[int(keys[1])].title == "back"  # same key, new row
    assert meta.records([int(keys[2])])[int(keys[2])] == first[int(keys[2])]


def test_record_cache_refuses_rows_read_before_a_write():
    """A row read from SQLite before a commit is not stored after that commit's invalidation."""
    cache = RecordCache(10)
    stale = {1: ProductRecord("p1", "old", "Bags")}
    epoch = cache.epoch  # a reader starts reading SQLite
    cache.invalidate([1])  # a writer commits key 1 meanwhile
    cache.fill(epoch, stale)
    assert cache.get(1) is None
    cache.fill(cache.epoch, stale)
    assert cache.get(1) == stale[1]


def test_record_cache_is_bounded_first_in_first_out(meta):
    cache = RecordCache(2)
    cache.fill(cache.epoch, {k: ProductRecord(f"p{k}", "t", "Bags") for k in (1, 2, 3)})
    assert len(cache) == 2 and cache.get(1) is None and cache.get(3) is not None
    keys, _ = meta.upsert([r.validated() for r in make_records(4)], make_vectors(4))
    meta.records(keys.tolist(), remember=False)  # whole-catalog scans leave the cache alone
    assert len(meta.cache) == 0
    off = MetadataStore(meta.path, record_cache_size=0)
    try:
        assert off.records(keys.tolist()) and len(off.cache) == 0
    finally:
        off.close()
