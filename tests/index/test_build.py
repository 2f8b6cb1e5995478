"""build_product_index: index choice, measured recall in the manifest, loadable result."""

from __future__ import annotations

import numpy as np
import pytest
from index_testdata import D, make_records, make_vectors

from index.build import BuildConfig, build_product_index
from index.errors import IndexStoreError
from index.plan import IndexPlan
from index.store import ProductIndex


def test_build_flat_records_perfect_recall(tmp_path):
    manifest = build_product_index(tmp_path / "ix", make_records(300), make_vectors(300), "fp")
    assert manifest["factory"] == "Flat" and manifest["ntotal"] == 300
    assert manifest["build"]["recall_at_10"] == 1.0
    with ProductIndex.open(tmp_path / "ix", expected_fingerprint="fp") as store:
        assert store.manifest["build"] == manifest["build"] and len(store) == 300


def test_build_under_memory_budget_uses_ivf_pq_with_rerank(tmp_path):
    n = 3000
    xb = make_vectors(n)
    manifest = build_product_index(
        tmp_path / "ix",
        make_records(n),
        xb,
        "fp",
        memory_budget_bytes=n * D,  # less than float32 vectors need
        plan=IndexPlan(min_train_points=n, pq_bits=4),
        config=BuildConfig(n_eval_queries=100),
    )
    assert "PQ" in manifest["factory"]
    assert 0.8 <= manifest["build"]["recall_at_10"] <= 1.0
    with ProductIndex.open(tmp_path / "ix") as store:
        hit = store.search(xb[:1], 1)[0][0]
        assert hit.id == "p0" and np.isclose(hit.score, 1.0, atol=1e-5)  # exact re-ranked score


def test_build_tunes_search_effort_to_target_recall(tmp_path):
    n = 2000
    manifest = build_product_index(
        tmp_path / "ix",
        make_records(n),
        make_vectors(n),
        "fp",
        factory="IVF32,Flat",
        plan=IndexPlan(ivf_nprobe=16),  # tuning starts low whatever the plan's default
        config=BuildConfig(n_eval_queries=100, target_recall=0.9, min_search_effort=1,
                           timed_queries=20),
    )
    build = manifest["build"]
    assert build["tuning"][0]["search_effort"] == 1 and build["search_effort"] > 1
    assert build["recall_at_10"] >= 0.9
    tried = {t["search_effort"]: t["recall_at_10"] for t in build["tuning"]
             if not t.get("past_target")}
    chosen = build["search_effort"]
    assert tried[chosen] >= 0.9  # the lowest effort tried that reaches it:
    assert all(recall < 0.9 for effort, recall in tried.items() if effort < chosen)
    assert any(e & (e - 1) for e in tried)  # doubled, then narrowed down between two doublings
    past = [t["search_effort"] for t in build["tuning"] if t.get("past_target")]
    assert past and min(past) > max(tried)  # the curve goes on (to nlist 32)
    assert all(t["qps_batch1"] > 0 for t in build["tuning"])  # the recall/speed curve
    assert [t["search_effort"] for t in build["tuning"]] == sorted(
        t["search_effort"] for t in build["tuning"]
    )
    with ProductIndex.open(tmp_path / "ix") as store:
        assert store.search_effort == build["search_effort"]  # saved with the snapshot


def test_rebuild_over_an_existing_index(tmp_path):
    build_product_index(tmp_path / "ix", make_records(50), make_vectors(50), "fp-old")
    with pytest.raises(IndexStoreError, match="already holds"):
        build_product_index(tmp_path / "ix", make_records(60), make_vectors(60), "fp-new")
    manifest = build_product_index(
        tmp_path / "ix", make_records(60), make_vectors(60, seed=3), "fp-new", overwrite=True
    )
    assert manifest["ntotal"] == 60
    with ProductIndex.open(tmp_path / "ix", expected_fingerprint="fp-new") as store:
        assert len(store) == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_tuning_queries_lie_as_near_as_neighbouring_products() -> None:
    """The default held-out queries are perturbed by the median distance between neighbours
    (a duplicate row counts as its own neighbour at distance 0, not as the row itself)."""
    from index.evaluation import median_nn_distance

    e = np.eye(4, dtype=np.float32)
    xb = np.stack([e[0], e[0], e[1], (e[1] + 0.1 * e[2]) / np.linalg.norm(e[1] + 0.1 * e[2])])
    near = float(np.linalg.norm(xb[2] - xb[3]))
    assert median_nn_distance(xb) == pytest.approx(near / 2)  # distances 0, 0, near, near
    assert median_nn_distance(xb, n=2, seed=0) in (0.0, pytest.approx(near / 2), near)
    assert BuildConfig().query_noise is None


def test_query_sets_must_match_the_index_dimension(tmp_path):
    with pytest.raises(ValueError, match="query set 'title' has shape"):
        build_product_index(tmp_path / "ix", make_records(50), make_vectors(50), "fp",
                            query_sets={"title": np.zeros((5, D + 1), np.float32)})
    manifest = build_product_index(tmp_path / "ok", make_records(50), make_vectors(50), "fp",
                                   query_sets={"title": make_vectors(5, seed=1),
                                               "none": np.zeros((0, D), np.float32)})
    assert manifest["build"]["recall_at_10_by_queries"] == {"perturbed": 1.0, "title": 1.0}
