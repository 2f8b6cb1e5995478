"""Pure functions over result arrays: exact ground truth and recall (as faiss contrib does)."""

from __future__ import annotations

import numpy as np

from huse_common.topk import knn
from huse_common.vectors import l2_normalize, row_norms


def exact_knn(xq: np.ndarray, xb: np.ndarray, k: int) -> np.ndarray:
    """Row positions (nq, k) of the k largest inner products (ground truth for recall)."""
    return exact_knn_scores(xq, xb, k)[1]


def exact_knn_scores(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, row positions), each (nq, k), of the k largest inner products, best first."""
    return knn(xq, xb, min(k, xb.shape[0]))


def tie_aware_recall_at_k(I: np.ndarray, xq: np.ndarray, xb: np.ndarray,  # noqa: E741
                          ref_scores: np.ndarray, k: int, epsilon: float) -> float:
    """Mean fraction of the first k results (row positions in xb, -1 pads) whose exact inner
    product with the query is at least the exact k-th best minus `epsilon`: ann-benchmarks'
    k-NN recall. Among products that tie with the k-th (the same title listed twice, near
    copies) any is a right answer; id recall counts only the ones exact search happened to
    rank first, so no search effort reaches it."""
    I = np.asarray(I)[:, :k]  # noqa: E741
    found = I >= 0
    rows = xb[np.where(found, I, 0)]  # (nq, k, d)
    scores = np.einsum("qkd,qd->qk", rows, np.asarray(xq, dtype=np.float32))
    kk = min(k, ref_scores.shape[1])
    threshold = ref_scores[:, kk - 1 : kk] - epsilon
    hits = (found & (scores >= threshold)).sum(axis=1)
    return float(np.mean(np.minimum(hits, kk)) / kk) if len(hits) else 0.0


def recall_at_k(I: np.ndarray, I_ref: np.ndarray, k: int) -> float:  # noqa: E741
    """Mean fraction of the true top-k found in the first k results (-1 pads never match)."""
    hits = [
        len(set(row[:k][row[:k] >= 0].tolist()) & set(ref[:k].tolist()))
        for row, ref in zip(I, I_ref, strict=True)
    ]
    return float(np.mean(hits) / k) if hits else 0.0


def median_nn_distance(xb: np.ndarray, n: int | None = None, seed: int = 0) -> float:
    """Median Euclidean distance from a row to its nearest other row, over `n` sampled rows
    (all when None): how far apart neighbouring products are."""
    rows = np.arange(xb.shape[0])
    if n is not None and n < xb.shape[0]:
        rows = np.random.default_rng(seed).choice(xb.shape[0], size=n, replace=False)
    if xb.shape[0] < 2:
        return 0.0
    nearest = knn(xb[rows], xb, 2)[1]
    other = np.where(nearest[:, 0] == rows, nearest[:, 1], nearest[:, 0])
    return float(np.median(row_norms(xb[rows] - xb[other])))


def perturbed_queries(xb: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """n held-out queries: database rows plus gaussian noise of norm ~`noise`, re-normalised.

    Perturbing avoids the trivial self-match of querying stored vectors while keeping the
    queries where the real ones land (near products).
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(xb.shape[0], size=min(n, xb.shape[0]), replace=False)
    xq = xb[rows] + rng.normal(
        scale=noise / np.sqrt(xb.shape[1]), size=(rows.shape[0], xb.shape[1])
    )
    return l2_normalize(xq).astype(np.float32)
