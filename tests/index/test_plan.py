"""index.plan: the candidates measured side by side and the choice from a measured curve."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.plan import IndexPlan, candidates, pick


@pytest.mark.parametrize("d", [256, 768, 130])
def test_candidates_are_valid_factories_for_any_d(d: int) -> None:
    found = candidates(1_000_000, d)
    kinds = {c.factory.split(",")[0][:3] for c in found}
    assert kinds == {"IVF", "HNS"}
    assert any("x4fs,RFlat" in c.factory for c in found)  # PQ fast-scan + exact refine
    for cand in found:
        index = faiss.index_factory(d, cand.factory, faiss.METRIC_INNER_PRODUCT)
        assert index.d == d
        assert cand.efforts == tuple(sorted(cand.efforts)) and cand.efforts


def test_candidate_lists_fit_the_data_size() -> None:
    plan = IndexPlan()
    for n in (2_000, 100_000, 1_000_000):
        for cand in candidates(n, 64, plan):
            if cand.factory.startswith("IVF"):
                nlist = int(cand.factory[3:].split(",")[0])
                assert n >= nlist * plan.ivf_min_points_per_list
                assert max(cand.efforts) <= nlist
    with pytest.raises(ValueError):
        candidates(0, 64)


def test_candidate_indexes_search_at_d_not_256() -> None:
    """A candidate built at an odd width answers (the served vector may widen)."""
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(3000, 130)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    factory = next(c.factory for c in candidates(3000, 130) if "RFlat" in c.factory)
    index = faiss.index_factory(130, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    faiss.extract_index_ivf(index).nprobe = 64
    _, ids = index.search(xb[:5], 1)
    assert ids[:, 0].tolist() == list(range(5))


def test_pick_takes_the_fastest_point_that_reaches_the_target() -> None:
    curve = [
        {"index": "a", "recall_at_10": 0.99, "qps": 100.0},
        {"index": "b", "recall_at_10": 0.96, "qps": 900.0},
        {"index": "c", "recall_at_10": 0.90, "qps": 5000.0},
    ]
    assert pick(curve, 0.95)["index"] == "b"
    assert pick(curve, 0.98)["index"] == "a"
    assert pick(curve, 0.999) is None
    assert pick([], 0.5) is None
