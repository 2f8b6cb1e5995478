"""Seeded synthetic vectors and products for the index tests (small, so tests stay fast)."""

from __future__ import annotations

import numpy as np

from index.store import ProductRecord

D = 16
CATEGORIES = ["Footwear > Shoes", "Footwear > Boots > Winter", "Footwearables", "Apparel > Tops"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_vectors(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(n, d)))


def make_records(n: int, start: int = 0) -> list[ProductRecord]:
    return [
        ProductRecord(
            f"p{i}", f"title {i}", CATEGORIES[i % len(CATEGORIES)], f"img/{i}.jpg", {"i": str(i)}
        )
        for i in range(start, start + n)
    ]


def brute_force(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference (D, I) by numpy: I are row positions in xb."""
    scores = xq @ xb.T
    I = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # noqa: E741
    return np.take_along_axis(scores, I, axis=1), I
