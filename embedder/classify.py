"""Classification of embeddings against a bundle's label spaces: linear-head probabilities or
centroid cosines per head, and whole category paths scored jointly over their levels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from huse_common.categories import prefix
from huse_common.vectors import l2_normalize

METHODS = ("linear", "centroid")  # softmax of the shared heads, or cosine to class centroids
PATH_KEY = "path"  # classify output: the best consistent category paths
LOG_FLOOR = 1e-12  # probabilities are clipped here before the log of the path product


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def ancestor_columns(labels: dict[str, list[str]], levels: Sequence[str],
                     leaf_head: str) -> np.ndarray:
    """(levels, n_leaf): the column of each leaf class's ancestor in each level head, -1 where
    that ancestor is not in the level's label space (a rare parent)."""
    leaves = labels[leaf_head]
    cols = np.full((len(levels), len(leaves)), -1, dtype=np.int64)
    for li, head in enumerate(levels):
        index = {c: j for j, c in enumerate(labels[head])}
        for j, leaf in enumerate(leaves):
            cols[li, j] = index.get(prefix(leaf, li + 1), -1)
    return cols


def path_scores(scores: dict[str, np.ndarray], levels: Sequence[str], cols: np.ndarray,
                method: str) -> np.ndarray:
    """(n, n_leaf) scores of whole category paths from per-level scores, so one answer is
    consistent at every level: the product of the level probabilities (linear) or the mean
    of the level cosines (centroid); levels where an ancestor is unknown are skipped."""
    n = len(next(iter(scores.values())))
    total = np.zeros((n, cols.shape[1]), np.float64)
    counted = np.zeros(cols.shape[1], np.float64)
    for li, head in enumerate(levels):
        known = cols[li] >= 0
        s = scores[head][:, np.where(known, cols[li], 0)]
        if method == "linear":
            total += np.where(known, np.log(np.maximum(s, LOG_FLOOR)), 0.0)
        else:
            total += np.where(known, s, 0.0)
        counted += known
    if method == "linear":
        return np.exp(total).astype(np.float32)
    return (total / np.maximum(counted, 1)).astype(np.float32)


def rank_labels(ranked_by: dict[str, np.ndarray], names: dict[str, list[str]], k: int,
                threshold: float) -> list[dict[str, dict]]:
    """Per row: {head: {"labels": [(label, score)] * k, "other": top score < threshold}}."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(next(iter(ranked_by.values())))
    out: list[dict[str, dict]] = [{} for _ in range(n)]
    for head, s in ranked_by.items():
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        for i, row in enumerate(top):
            ranked = [(names[head][j], float(s[i, j])) for j in row]
            out[i][head] = {"labels": ranked, "other": ranked[0][1] < threshold}
    return out


def class_centroids(emb: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, d) unit-norm class means of unit embeddings; rows with y == -1 are skipped,
    a class without rows gets a zero vector (it then never wins a cosine ranking)."""
    return l2_normalize(class_sums(emb, y, n_classes)).astype(np.float32)


def class_sums(emb: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, d) float64 per-class sums of the rows with y >= 0: added up over chunks of
    a catalog, then normalised, they give class_centroids of the whole without holding it."""
    emb = np.asarray(emb, dtype=np.float32)
    if len(emb) != len(y):
        raise ValueError(f"{len(emb)} embeddings but {len(y)} labels")
    sums = np.zeros((n_classes, emb.shape[1]), np.float64)
    keep = y >= 0
    np.add.at(sums, y[keep], emb[keep])
    return sums
