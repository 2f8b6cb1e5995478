"""index.evaluation: recall by id and ann-benchmarks' tie-aware recall."""

from __future__ import annotations

import numpy as np

from index.evaluation import exact_knn_scores, recall_at_k, tie_aware_recall_at_k


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_tied_product_counts_a_worse_one_does_not():
    """Rows 0 and 1 are the same product listed twice: either is the nearest to a query equal
    to them; id recall credits only the one exact search ranked first."""
    xb = _unit([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]])
    xq = xb[:1]
    scores, ids = exact_knn_scores(xq, xb, 1)
    twin = np.array([[1 - ids[0, 0]]])  # the other copy
    assert recall_at_k(twin, ids, 1) == 0.0
    assert tie_aware_recall_at_k(twin, xq, xb, scores, 1, 1e-3) == 1.0
    assert tie_aware_recall_at_k(np.array([[2]]), xq, xb, scores, 1, 1e-3) == 0.0
    assert tie_aware_recall_at_k(np.array([[-1]]), xq, xb, scores, 1, 1e-3) == 0.0


def test_epsilon_bounds_what_counts_as_a_tie():
    xb = _unit([[1, 0], [1, 0.03], [1, 0.2]])  # cos to row 0: 1, 0.99955, 0.98058
    xq = xb[:1]
    scores, _ = exact_knn_scores(xq, xb, 1)
    near, far = np.array([[1]]), np.array([[2]])
    assert tie_aware_recall_at_k(near, xq, xb, scores, 1, 1e-3) == 1.0
    assert tie_aware_recall_at_k(near, xq, xb, scores, 1, 1e-4) == 0.0
    assert tie_aware_recall_at_k(far, xq, xb, scores, 1, 1e-3) == 0.0
    full, _ = exact_knn_scores(xq, xb, 2)
    # k = 2: the threshold is the 2nd best; the best and the near tie both count
    assert tie_aware_recall_at_k(np.array([[0, 1]]), xq, xb, full, 2, 1e-3) == 1.0
    assert tie_aware_recall_at_k(np.array([[0, 2]]), xq, xb, full, 2, 1e-3) == 0.5
