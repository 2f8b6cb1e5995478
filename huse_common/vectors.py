"""L2 normalisation and the fusion formula: the one definition of both (numpy, and torch through
the `normalize` argument), so the trainer, the bundle and the index fuse the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

EPS = 1e-12  # rows with a smaller norm stay (near) zero instead of dividing by zero
PLAIN_SUM = 0.5  # the HUSE paper's fusion: image and text weigh the same

T = TypeVar("T")


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of each row of a (n, d) array."""
    return np.linalg.norm(x, axis=1)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of a (n, d) array scaled to unit L2 norm (all-zero rows stay zero), computed in the
    input's float precision (integers become float64)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x / np.maximum(row_norms(x)[:, None], EPS)


def fuse(e_img: T, e_txt: T, image_weight: float = PLAIN_SUM,
         normalize: Callable[[T], T] = l2_normalize) -> T:
    """normalize(w * normalize(e_img) + (1 - w) * normalize(e_txt)); w = 0.5 is the plain sum.

    `normalize` is the row normaliser of the array type (torch callers pass F.normalize)."""
    return normalize(image_weight * normalize(e_img) + (1.0 - image_weight) * normalize(e_txt))
