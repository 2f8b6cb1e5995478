"""Pure functions over result arrays: exact ground truth and recall (as faiss contrib does)."""

from __future__ import annotations

import numpy as np

from huse_common.topk import knn
from huse_common.vectors import l2_normalize


def exact_knn(xq: np.ndarray, xb: np.ndarray, k: int) -> np.ndarray:
    """Row positions (nq, k) of the k largest inner products (ground truth for recall)."""
    return knn(xq, xb, min(k, xb.shape[0]))[1]


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
    return l2_normalize(xq).astype(np.float32)
