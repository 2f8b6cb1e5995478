"""The HUSE semantic graph: cosine distances between class-name embeddings.

Class names are full category paths ("Apparel > Topwear > Shirts"), made readable leaf-first
without repeated levels ("Shirts, Topwear, Apparel") and embedded with the frozen text backbone,
so related classes (shirts and tshirts) are close and unrelated ones (shirts and watches) far.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from huse_common.categories import split_path
from huse_common.vectors import l2_normalize

logger = logging.getLogger(__name__)


def readable_class_name(label: str) -> str:
    """'Accessories > Watches > Watches' -> 'Watches, Accessories' (leaf first, no repeats)."""
    parts: list[str] = []
    for part in reversed(split_path(label)):
        if part not in parts:
            parts.append(part)
    return ", ".join(parts)


def class_distance_matrix(name_emb: np.ndarray) -> np.ndarray:
    """A_ij = 1 - cos(e_i, e_j), clipped to [0, 2], with an exact zero diagonal."""
    name_emb = np.asarray(name_emb, dtype=np.float64)
    if name_emb.ndim != 2 or len(name_emb) == 0:
        raise ValueError(f"name_emb must be (C, d) with C >= 1, got {name_emb.shape}")
    unit = l2_normalize(name_emb)
    A = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(A, 0.0)
    return A.astype(np.float32)


def build_semantic_graph(class_labels: Sequence[str], text_backbone: Any) -> np.ndarray:
    """Embed the readable class names with the text backbone (`.encode(list[str])`) -> A."""
    names = [readable_class_name(c) for c in class_labels]
    A = class_distance_matrix(text_backbone.encode(names))
    off = A[~np.eye(len(A), dtype=bool)]
    if off.size:
        logger.info("semantic graph over %d classes: distance min %.3f median %.3f max %.3f",
                    len(A), off.min(), np.median(off), off.max())
    return A
