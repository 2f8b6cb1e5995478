"""Pure evaluation metrics: numpy arrays in, numpy arrays / floats out (faiss-contrib style).

Label convention shared with the trainer: an integer label of -1 means "not in this head's label
space" (a class too rare to train on); such rows are ignored by the classification metrics here.
A metric over zero valid rows is ``nan`` (the report prints it as n/a), never a silent 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from huse_common.topk import knn

logger = logging.getLogger(__name__)


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}")
    return y.astype(np.int64, copy=False)


def topk_accuracy(scores: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of labelled rows (y >= 0) whose true class is among the k highest scores.

    ``scores`` is (n, C): probabilities, logits or similarities, higher is better.
    """
    scores = np.asarray(scores)
    y = _labels(y, "y")
    if scores.ndim != 2 or scores.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be (n, C) with n = len(y) = {y.shape[0]}, "
                         f"got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if y.size and y.max() >= scores.shape[1]:
        raise ValueError(f"label {int(y.max())} out of range for {scores.shape[1]} classes")
    valid = y >= 0
    if not valid.any():
        return float("nan")
    s, t = scores[valid], y[valid]
    k = min(k, s.shape[1])
    true_score = s[np.arange(len(t)), t]
    # Rank = number of other classes scoring at least as high as the true one: ties count
    # against the true class (a constant score gets no credit) and no tie order is involved.
    rank = (s >= true_score[:, None]).sum(axis=1) - 1
    return float(np.mean(rank < k))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in y_true or y_pred.

    Same definition as ``sklearn.metrics.f1_score(average="macro")`` (0 where precision and
    recall are both 0); rows with y_true == -1 are dropped first. Macro-F1 weighs a rare class
    as much as a large one, which is what an unbalanced catalog needs next to top-1.
    """
    y_true = _labels(y_true, "y_true")
    y_pred = _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    valid = y_true >= 0
    if not valid.any():
        return float("nan")
    t, p = y_true[valid], y_pred[valid]
    classes = np.union1d(t, p)
    ti = np.searchsorted(classes, t)
    pi = np.searchsorted(classes, p)
    n = len(classes)
    tp = np.bincount(ti[ti == pi], minlength=n).astype(np.float64)
    support = np.bincount(ti, minlength=n)
    predicted = np.bincount(pi, minlength=n)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(n), where=denom > 0)
    return float(f1.mean())


def knn_search(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN (huse_common.topk.knn): ``(D, I)``, each (nq, k), best first.

    ``exclude_self`` means query i and database item i are the same item, so item i is left out
    of row i; ValueError when k exceeds the items left to return.
    """
    if not 1 <= k <= len(xb) - int(exclude_self):
        raise ValueError(f"k = {k} is out of range for a database of {len(xb)} items "
                         f"(exclude_self={exclude_self})")
    return knn(xq, xb, k, exclude_self)


def class_recall_at_k(
    xq: np.ndarray,
    yq: np.ndarray,
    xb: np.ndarray,
    yb: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
) -> dict[int, float]:
    """Class-level retrieval recall@k (the HUSE paper's protocol).

    A query scores a hit at k when any of its k nearest database items (inner product; pass
    L2-normalised vectors for cosine) has the query's class. ``exclude_self`` says that query i
    and database item i are the same item (xq and xb describe the same rows), so item i is
    removed from query i's results. Queries with yq == -1 are skipped; database items with
    yb == -1 are retrieved but never count as hits. Exact search (``knn_search``).
    """
    yq = _labels(yq, "yq")
    yb = _labels(yb, "yb")
    if len(yq) != len(xq) or len(yb) != len(xb):
        raise ValueError(f"labels do not match rows: xq {np.shape(xq)} yq {yq.shape}, "
                         f"xb {np.shape(xb)} yb {yb.shape}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    queries = np.flatnonzero(yq >= 0)
    if queries.size == 0:
        return {k: float("nan") for k in ks}
    kmax = min(ks[-1], len(xb) - int(exclude_self))
    # With exclude_self the query rows must keep their positions, so search all rows and pick.
    _, top = knn_search(xq if exclude_self else xq[queries], xb, kmax, exclude_self)
    if exclude_self:
        top = top[queries]
    hits = yb[top] == yq[queries, None]
    # rank of the first hit; ks[-1] (never < any k) when there is none
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), ks[-1])
    return {k: float(np.mean(first_hit < k)) for k in ks}


def confusion_matrix_top(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, max_classes: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts restricted to the ``max_classes`` largest true classes.

    Returns ``(classes, cm)``: ``classes`` (m,) are the chosen class indices, largest first;
    ``cm`` is (m, m + 1) int64, cm[i, j] = items of class classes[i] predicted as classes[j],
    and the last column counts predictions outside the chosen classes, so each row sums to the
    class's support. Rows with y_true == -1 are dropped.
    """
    y_true = _labels(y_true, "y_true")
    y_pred = _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    if max_classes < 1:
        raise ValueError(f"max_classes must be >= 1, got {max_classes}")
    valid = y_true >= 0
    t, p = y_true[valid], y_pred[valid]
    if t.size and max(t.max(), p.max()) >= n_classes:
        raise ValueError(f"labels go up to {int(max(t.max(), p.max()))}, "
                         f"but n_classes = {n_classes}")
    counts = np.bincount(t, minlength=n_classes)
    present = np.flatnonzero(counts)
    # Largest first; ties broken by class index so the choice is deterministic.
    classes = present[np.lexsort((present, -counts[present]))][:max_classes]
    position = np.full(n_classes, len(classes), dtype=np.int64)
    position[classes] = np.arange(len(classes))
    keep = position[t] < len(classes)
    cm = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)
    np.add.at(cm, (position[t[keep]], position[p[keep]]), 1)
    return classes.astype(np.int64), cm
