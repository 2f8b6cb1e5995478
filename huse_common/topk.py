"""Brute-force top-k by inner product: the one exact search every package uses (the index's
filtered search and ground truth, the trainer's retrieval metrics and k-NN baseline)."""

from __future__ import annotations

import numpy as np

MAX_SCORES = 1 << 25  # scores held at once while searching in query blocks (128 MiB float32)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of `scores` (nq, m), best first (ties: lower column
    first). D, I of shape (nq, k); past m columns, D = -inf and I = -1 pad."""
    nq, m = scores.shape
    D = np.full((nq, k), -np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)  # noqa: E741 (faiss vocabulary)
    kk = min(k, m)
    if kk == 0:
        return D, I
    if kk < m:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.tile(np.arange(m), (nq, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    D[:, :kk] = np.take_along_axis(scores, best, axis=1)
    I[:, :kk] = best
    return D, I


def knn(xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool = False,
        max_scores: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN in query blocks: D, I (nq, k), best first, I = row of xb.

    `exclude_self`: query i and database row i are the same item, so row i is left out of
    query i's results. At most `max_scores` (default MAX_SCORES) scores exist at once."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ValueError(f"xq and xb must be 2-D with the same d, got {xq.shape} and {xb.shape}")
    if exclude_self and len(xq) != len(xb):
        raise ValueError(f"exclude_self needs row-aligned xq and xb, got {len(xq)} and {len(xb)}")
    block = max(1, (max_scores or MAX_SCORES) // max(len(xb), 1))
    D = np.empty((len(xq), k), dtype=np.float32)
    I = np.empty((len(xq), k), dtype=np.int64)  # noqa: E741 (faiss vocabulary)
    for start in range(0, len(xq), block):
        sims = xq[start:start + block] @ xb.T
        if exclude_self:
            rows = np.arange(len(sims))
            sims[rows, rows + start] = -np.inf
        D[start:start + len(sims)], I[start:start + len(sims)] = topk(sims, k)
    return D, I
