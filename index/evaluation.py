"""Pure functions over result arrays: exact ground truth and recall (as faiss contrib does)."""

from __future__ import annotations

import numpy as np


def exact_knn(xq: np.ndarray, xb: np.ndarray, k: int, max_scores: int = 1 << 25) -> np.ndarray:
    """Row positions (nq, k) of the k largest inner products.

    Queries go in blocks so that at most `max_scores` scores (128 MiB) exist at once.
    """
    k = min(k, xb.shape[0])
    block = max(1, max_scores // max(xb.shape[0], 1))
    out = np.empty((xq.shape[0], k), dtype=np.int64)
    for i0 in range(0, xq.shape[0], block):
        scores = xq[i0 : i0 + block] @ xb.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[i0 : i0 + block] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at_k(I: np.ndarray, I_ref: np.ndarray, k: int) -> float:  # noqa: E741
    """Mean fraction of the true top-k found in the first k results (-1 pads never match)."""
    hits = [
        len(set(row[:k][row[:k] >= 0].tolist()) & set(ref[:k].tolist()))
        for row, ref in zip(I, I_ref, strict=True)
    ]
    return float(np.mean(hits) / k) if hits else 0.0


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
    return (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
