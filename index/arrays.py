"""Boundary validation and small array helpers for the vector index (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from huse_common.topk import topk as best_columns


def as_matrix(x: Any, d: int, name: str = "xb") -> np.ndarray:
    """Validate once at the boundary: (n, d) finite float32, contiguous, no zero rows."""
    arr = np.asarray(x)
    if arr.ndim == 1 and arr.shape[0] == d:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} has NaN or infinite values in rows {np.flatnonzero(bad)[:10]}")
    zero = ~arr.any(axis=1)
    if zero.any():
        raise ValueError(f"{name} has all-zero rows {np.flatnonzero(zero)[:10]}")
    return arr


def as_ids(ids: Any, n: int | None = None) -> np.ndarray:
    """int64 (n,) ids, non-negative (-1 pads results) and unique within the batch."""
    arr = np.asarray(ids)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be a 1-d integer array, got shape {arr.shape} {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} ids for {n} vectors")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"ids must be >= 0 (-1 marks padding), got {arr[arr < 0][:10].tolist()}")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"duplicate ids within one batch: {uniq[counts > 1][:10].tolist()}")
    return arr


def topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of `scores` (nq, m) over columns labelled `ids`, -1 padded."""
    D, cols = best_columns(scores, k)
    I = np.full_like(cols, -1)  # noqa: E741 (faiss vocabulary)
    found = cols >= 0
    I[found] = ids[cols[found]]
    return D, I
