"""ProductIndex with a prefix index: queries zero past the prefix columns (the served space's
titles) are answered from an index of the prefix columns alone, with the main index's scores,
and that index is written, saved, reopened, replayed and rebuilt with the main one."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from index_testdata import brute_force, make_records, unit

from index.build import BuildConfig, build_product_index
from index.errors import IndexStoreError
from index.plan import IndexPlan
from index.store import ProductIndex

D, P, N = 24, 8, 300


def rows(n: int, seed: int = 0) -> np.ndarray:
    """Unit rows whose prefix and tail both carry signal."""
    return unit(np.random.default_rng(seed).normal(size=(n, D)))


def title_queries(n: int, seed: int = 1) -> np.ndarray:
    q = np.zeros((n, D), np.float32)
    q[:, :P] = unit(np.random.default_rng(seed).normal(size=(n, P)))
    return q


def ids_and_scores(store: ProductIndex, xq: np.ndarray, k: int = 5) -> tuple[list, np.ndarray]:
    hits = store.search(xq, k)
    return [[h.id for h in row] for row in hits], np.array([[h.score for h in row]
                                                            for row in hits])


def expected(xq: np.ndarray, xb: np.ndarray, live: list[int], k: int = 5) -> tuple:
    scores, pos = brute_force(xq, xb[live], k)
    return [[f"p{live[j]}" for j in row] for row in pos], scores


@pytest.fixture
def xb() -> np.ndarray:
    return rows(N)


@pytest.fixture
def store(tmp_path, xb):
    s = ProductIndex.create(tmp_path / "ix", d=D, bundle_fingerprint="fp", prefix_dims=P)
    s.upsert(make_records(N), xb)
    yield s
    s.close()


def test_title_queries_mixed_batches_and_deletes_match_exact_search(store, xb):
    titles, photos = title_queries(6), rows(4, seed=2)
    mixed = np.vstack([titles[:3], photos[:2], titles[3:], photos[2:]])
    live = list(range(N))
    for xq in (titles, photos, mixed):
        got_ids, got_scores = ids_and_scores(store, xq)
        want_ids, want_scores = expected(xq, xb, live)
        assert got_ids == want_ids
        np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    first = ids_and_scores(store, titles[:1])[0][0][0]
    store.delete([first])
    live.remove(int(first[1:]))
    assert ids_and_scores(store, titles)[0] == expected(titles, xb, live)[0]
    assert store.prefix_dims == P


def test_title_queries_use_the_prefix_index(store, monkeypatch):
    """Routing, seen from the inside: a title never reaches the main index, a photo does."""
    seen = []
    main_search = store._vi.search
    monkeypatch.setattr(store._vi, "search",
                        lambda xq, *a, **kw: seen.append(xq.shape) or main_search(xq, *a, **kw))
    store.search(title_queries(3), 5)
    assert seen == []
    store.search(np.vstack([title_queries(2), rows(1, seed=3)]), 5)
    assert seen == [(1, D)]


def test_prefix_index_is_saved_reopened_replayed_and_rebuilt(tmp_path, store, xb, caplog):
    titles = title_queries(5)
    store.save()
    manifest = store.manifest
    prefix_file = manifest["prefix"]["snapshot"]["file"]
    assert manifest["prefix"]["dims"] == P and (tmp_path / "ix" / prefix_file).is_file()
    extra = rows(1, seed=9)
    extra[0, :P] = titles[0, :P] * 10  # the best title match, written after the snapshot
    store.upsert(make_records(1, start=N), unit(extra))
    store.close()
    everyone = np.vstack([xb, unit(extra)])
    with ProductIndex.open(tmp_path / "ix") as reopened:
        assert reopened.prefix_dims == P
        assert ids_and_scores(reopened, titles)[0] == expected(titles, everyone,
                                                               list(range(N + 1)))[0]
        assert ids_and_scores(reopened, titles[:1])[0][0][0] == f"p{N}"  # replayed
        reopened.save()
        files = sorted(p.name for p in (tmp_path / "ix").glob("*.faiss"))
        assert files == sorted([reopened.manifest["snapshot"]["file"],
                                reopened.manifest["prefix"]["snapshot"]["file"]])
        lost = reopened.manifest["prefix"]["snapshot"]["file"]
    (tmp_path / "ix" / lost).unlink()
    with caplog.at_level(logging.WARNING), ProductIndex.open(tmp_path / "ix") as rebuilt:
        assert ids_and_scores(rebuilt, titles)[0] == expected(titles, everyone,
                                                              list(range(N + 1)))[0]
    assert "rebuilding the vector index" in caplog.text


def test_prefix_dims_and_rows_are_checked(tmp_path):
    for bad in (0, D, 2.5, True):
        with pytest.raises(ValueError, match="prefix_dims"):
            ProductIndex.create(tmp_path / f"x{bad}", d=D, bundle_fingerprint="fp",
                                prefix_dims=bad)
    with ProductIndex.create(tmp_path / "ix", d=D, bundle_fingerprint="fp",
                             prefix_dims=P) as s:
        tail_only = np.zeros((1, D), np.float32)
        tail_only[0, -1] = 1.0
        with pytest.raises(ValueError, match="zero in their first 8 columns"):
            s.upsert(make_records(1), tail_only)
        assert len(s) == 0


def test_an_approximate_build_serves_titles_from_the_prefix_index(tmp_path):
    """Rows of 8 classes in the prefix beside a tail that varies more: IVF lists over whole
    rows scatter a title's neighbours, an IVF over the prefix keeps them together, so the
    prefix index reaches the target at a lower effort, tuned on titles alone."""
    rng = np.random.default_rng(5)
    n = 3000
    prefix = np.eye(P)[np.arange(n) % P] + 0.3 * rng.normal(size=(n, P))
    xb = np.hstack([unit(prefix), unit(rng.normal(size=(n, D - P)))]) / np.sqrt(2)
    pick = rng.choice(n, 300, replace=False)
    titles = np.hstack([xb[pick, :P] * np.sqrt(2), np.zeros((300, D - P))])
    config = BuildConfig(n_eval_queries=300, target_recall=0.95, timed_queries=10)
    builds = {
        dims: build_product_index(tmp_path / f"ix{dims}", make_records(n), xb, "fp",
                                  factory="IVF32,Flat", config=config,
                                  query_sets={"title": titles}, prefix_dims=dims)["build"]
        for dims in (None, P)
    }
    assert all(b["recall_at_10_by_queries"]["title"] >= 0.95 for b in builds.values())
    without, with_prefix = builds[None], builds[P]
    assert with_prefix["prefix"]["queries"] == ["title"]  # titles tune the prefix index alone
    assert with_prefix["prefix"]["search_effort"] < without["search_effort"]
    assert [t["search_effort"] for t in with_prefix["tuning"]] == [
        t["search_effort"] for t in without["tuning"]]  # the main index tunes as before
    with ProductIndex.open(tmp_path / f"ix{P}") as store:  # both efforts saved
        assert store.prefix_search_effort == with_prefix["prefix"]["search_effort"]
        assert store.search_effort == with_prefix["search_effort"]


def test_search_effort_parts(store, tmp_path):
    with pytest.raises(ValueError, match="part must be"):
        store.set_search_effort(4, part="titles")
    with ProductIndex.create(tmp_path / "plain", d=D, bundle_fingerprint="fp") as plain:
        with pytest.raises(IndexStoreError, match="no prefix index"):
            plain.set_search_effort(4, part="prefix")
        assert plain.prefix_dims is None and plain.prefix_search_effort is None
    assert store.prefix_search_effort is None  # exact (Flat) prefix index


def test_title_queries_keep_category_and_excluded_id_filters(store, xb):
    """The prefix index gets the same filters: a category, and ids left out."""
    from index_testdata import CATEGORIES

    titles = title_queries(4)
    category = CATEGORIES[1]
    in_category = [i for i, r in enumerate(make_records(N)) if r.category == category]
    hits = store.search(titles, 5, category_prefix=category)
    assert [[h.id for h in row] for row in hits] == expected(titles, xb, in_category)[0]
    top = [row[0].id for row in store.search(titles, 1)]
    hits = store.search(titles, 5, exclude_ids=top)
    assert not {h.id for row in hits for h in row} & set(top)
    kept = [i for i in range(N) if f"p{i}" not in top]
    assert [[h.id for h in row] for row in hits] == expected(titles, xb, kept)[0]


def test_the_prefix_index_stays_hnsw_where_the_main_one_turns_ivf(tmp_path):
    """index.plan.prefix_plan: titles' neighbours are near-ties that IVF lists scatter, so the
    prefix index keeps HNSW to a larger size than the main index (at creation and reopening)."""
    plan = IndexPlan(flat_max_n=100, hnsw_max_n=200, prefix_hnsw_max_n=1000)
    xb = rows(500)
    with ProductIndex.create(tmp_path / "ix", d=D, bundle_fingerprint="fp", plan=plan,
                             prefix_dims=P) as store:
        store.upsert(make_records(500), xb)
        assert store.factory.startswith("IVF")
        store.save()
        assert store.manifest["prefix"]["factory"] == "HNSW32"
    with ProductIndex.open(tmp_path / "ix", plan=plan) as store:
        store.upsert(make_records(1, start=500), rows(1, seed=7))  # replans at most, stays
        assert store.save()["prefix"]["factory"] == "HNSW32"
        titles = title_queries(3)
        assert [[h.id for h in row] for row in store.search(titles, 3)] == expected(
            titles, np.vstack([xb, rows(1, seed=7)]), list(range(501)), 3)[0]
