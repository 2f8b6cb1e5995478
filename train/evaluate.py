"""Evaluation of a trained bundle on the test split, with two baselines from the same run.

Protocol (also written into report.json's "evaluation.protocol"):
- Classification: every head, for image-only, text-only and fused inputs, by the shared linear
  head (softmax) and by nearest class centroid (cosine). Rows whose label is -1 (a class with
  too few training items to be in the head's label space) are left out of top-k and macro-F1;
  "other_share" is over all test rows: the share whose best score is below the threshold.
- Retrieval: class-level recall@k at the leaf (a hit = a retrieved item of the query's leaf
  class, as in the HUSE paper). Queries and database are both the test split; for x->x the query
  itself is excluded, for image->text / text->image the product's own title / image stays in.
  Rare classes take part here (they are in the index), identified by their category path.
- Baseline (a): multinomial logistic regression (lbfgs) on standardised concatenated frozen
  image + text features, trained on the training split; C picked by top-1 on the validation
  split (or on a seeded hold-out of the training split when no validation split is given).
- Baseline (b): k-NN (cosine, similarity-weighted vote) on L2-normalised frozen image features
  with the training split as database; its retrieval figures use frozen image features with the
  same test-split protocol as HUSE's image->image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from embedder.classify import METHODS
from huse_common.categories import top_level
from huse_common.vectors import l2_normalize
from train.config import EvalConfig
from train.data import LabeledFeatures
from train.metrics import (
    class_recall_at_k,
    confusion_matrix_top,
    knn_search,
    macro_f1,
    topk_accuracy,
)
from train.timing import timed

logger = logging.getLogger(__name__)

INPUTS = ("image", "text", "fused")
RETRIEVAL_PAIRS = (  # (name, query input, database input, exclude the query itself)
    ("image->image", "image", "image", True),
    ("image->text", "image", "text", False),
    ("text->image", "text", "image", False),
    ("text->text", "text", "text", True),
    ("fused->fused", "fused", "fused", True),
    # What the served index answers: it stores fused vectors, and a photo or a title comes in.
    ("image->fused", "image", "fused", True),
    ("text->fused", "text", "fused", True),
)
RARE_GROUP = "(rare)"  # map label for a product whose top-level class is outside the label space


class EvalBundle(Protocol):
    """What evaluation needs of embedder.bundle.Bundle (the train-side contract)."""

    heads: list[str]
    labels: dict[str, list[str]]
    leaf_head: str
    other_threshold: float

    def embed_features(self, image_feats: Any = None, text_feats: Any = None,
                       titles: Any = None) -> np.ndarray: ...
    def head_probs(self, emb: np.ndarray) -> dict[str, np.ndarray]: ...
    def centroid_scores(self, emb: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class EvalArtifacts:
    """What the report's plots need beyond report.json's numbers."""

    confusion: np.ndarray  # (m, m + 1) counts, last column = predicted outside the m classes
    confusion_classes: list[str]  # m leaf class names, largest first
    confusion_source: str  # which input/method/head the matrix describes
    map_embeddings: np.ndarray  # (p, d) fused test embeddings (seeded subsample)
    map_groups: list[str]  # top-level category per map row
    seed: int = 0


def _classification(scores: np.ndarray, y: np.ndarray, topk: tuple[int, ...],
                    threshold: float | None) -> dict[str, float]:
    out = {f"top{k}": topk_accuracy(scores, y, k) for k in topk}
    out["macro_f1"] = macro_f1(y, scores.argmax(axis=1))
    if threshold is not None:
        out["other_share"] = float(np.mean(scores.max(axis=1) < threshold))
    return out


def _retrieval_classes(split: LabeledFeatures, leaf_head: str) -> np.ndarray:
    """Leaf class id per row for retrieval: from category paths when known, else leaf labels."""
    if split.categories is None:
        return np.asarray(split.labels[leaf_head], dtype=np.int64)
    _, ids = np.unique(np.asarray(split.categories, dtype=object).astype(str),
                       return_inverse=True)
    return ids.astype(np.int64)


def _top_groups(split: LabeledFeatures, bundle: EvalBundle) -> list[str]:
    if split.categories is not None:
        return [top_level(c) for c in split.categories]
    head = bundle.heads[0]
    names = bundle.labels[head]
    return [names[i] if i >= 0 else RARE_GROUP for i in split.labels[head]]


def _labelled(split: LabeledFeatures, head: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(split.labels[head]) >= 0)


def _scores_for_classes(probs: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Spread a model's per-class columns into the head's full label space (absent = 0)."""
    out = np.zeros((len(probs), n_classes), dtype=np.float64)
    out[:, classes] = probs
    return out


def _fit_logreg(x: np.ndarray, y: np.ndarray, c: float, cfg: EvalConfig) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=c, max_iter=cfg.logreg_max_iter))
    model.fit(x, y)
    return model


def logreg_baseline(train: LabeledFeatures, test: LabeledFeatures, head: str, n_classes: int,
                    cfg: EvalConfig, val: LabeledFeatures | None = None) -> dict[str, Any]:
    """Baseline (a): logistic regression on standardised concat(image, text) frozen features."""
    def feats(split: LabeledFeatures, rows: np.ndarray) -> np.ndarray:
        return np.hstack([split.baseline_image[rows], split.text[rows]]).astype(np.float32)

    def top1(model: Any, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(model.predict(x) == y))

    tr = _labelled(train, head)
    x_tr, y_tr = feats(train, tr), train.labels[head][tr]
    refit = val is None or not len(_labelled(val, head))
    if not refit:
        va = _labelled(val, head)
        x_sel, y_sel, x_fit, y_fit, selected_on = (feats(val, va), val.labels[head][va],
                                                   x_tr, y_tr, "validation split")
    else:
        perm = np.random.default_rng(cfg.seed).permutation(len(tr))
        n_hold = max(1, int(round(cfg.holdout_frac * len(tr))))
        hold, fit = perm[:n_hold], perm[n_hold:]
        x_sel, y_sel, x_fit, y_fit = x_tr[hold], y_tr[hold], x_tr[fit], y_tr[fit]
        selected_on = f"seeded {cfg.holdout_frac:.0%} hold-out of the training split"
    tried: dict[str, float] = {}
    best = None
    for c in cfg.logreg_cs:
        with timed(f"baseline (a) logistic regression C={c:g}"):
            model = _fit_logreg(x_fit, y_fit, c, cfg)
        tried[f"{c:g}"] = top1(model, x_sel, y_sel)
        if best is None or tried[f"{c:g}"] > best[0]:
            best = (tried[f"{c:g}"], c, model)
    _, c_best, model = best
    if refit:  # the hold-out only picked C: refit on the whole training split
        with timed(f"baseline (a) refit C={c_best:g}"):
            model = _fit_logreg(x_tr, y_tr, c_best, cfg)
    clf = model[-1]
    probs = _scores_for_classes(model.predict_proba(feats(test, np.arange(len(test)))),
                                clf.classes_, n_classes)
    out = _classification(probs, test.labels[head], cfg.topk, threshold=None)
    out.update(C=c_best, C_selected_on=selected_on, C_tried_top1=tried,
               converged=bool(np.all(clf.n_iter_ < cfg.logreg_max_iter)))
    return out


def knn_baseline(train: LabeledFeatures, test: LabeledFeatures, head: str, n_classes: int,
                 cfg: EvalConfig, retrieval_classes: np.ndarray) -> dict[str, Any]:
    """Baseline (b): cosine k-NN on frozen image features (classification + retrieval)."""
    tr = _labelled(train, head)
    xb = l2_normalize(np.asarray(train.baseline_image[tr], np.float32))
    xq = l2_normalize(np.asarray(test.baseline_image, np.float32))
    k = min(cfg.knn_k, len(tr))
    D, I = knn_search(xq, xb, k)  # noqa: E741 (faiss naming)
    votes = np.zeros((len(xq), n_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(xq)), k), train.labels[head][tr][I].ravel()),
              np.maximum(D, 0).ravel() + 1e-6)  # similarity-weighted; epsilon keeps the vote
    out = _classification(votes, test.labels[head], cfg.topk, threshold=None)
    recall = class_recall_at_k(xq, retrieval_classes, xq, retrieval_classes, cfg.ks,
                               exclude_self=True)
    out.update(k=k, retrieval={"image->image": {str(kk): v for kk, v in recall.items()}})
    return out


def evaluate(bundle: EvalBundle, train: LabeledFeatures, test: LabeledFeatures,
             cfg: EvalConfig | None = None,
             val: LabeledFeatures | None = None) -> tuple[dict[str, Any], EvalArtifacts]:
    """Evaluate ``bundle`` on ``test`` and run both baselines on the same split.

    Returns report.json's "evaluation" section and the arrays the plots need. ``val`` (optional)
    is only used to pick baseline (a)'s regularisation strength.
    """
    cfg = cfg or EvalConfig()
    if cfg.seed is None:  # called alone, not from a training run
        cfg = replace(cfg, seed=0)
    threshold = bundle.other_threshold if cfg.other_threshold is None else cfg.other_threshold
    leaf = bundle.leaf_head
    missing = [h for h in bundle.heads if h not in test.labels or h not in train.labels]
    if missing:
        raise ValueError(f"splits lack labels for heads {missing}; they have "
                         f"{sorted(test.labels)}")
    if len(test) < 2:
        raise ValueError(f"the test split needs at least 2 rows, got {len(test)}")

    timings: dict[str, float] = {}
    with timed("embed test split", timings):
        emb = _embeddings(bundle, test)
    heads: dict[str, Any] = {}
    fused_linear = None
    with timed("classification metrics", timings):
        for inp in INPUTS:
            scores = {"linear": bundle.head_probs(emb[inp]),
                      "centroid": bundle.centroid_scores(emb[inp])}
            if inp == "fused":
                fused_linear = scores["linear"][leaf]
            for head in bundle.heads:
                y = np.asarray(test.labels[head], dtype=np.int64)
                entry = heads.setdefault(head, {
                    "n_classes": len(bundle.labels[head]),
                    "n_test_labelled": int((y >= 0).sum()),
                    "n_test_ignored": int((y < 0).sum()),
                })
                entry[inp] = {m: _classification(scores[m][head], y, cfg.topk, threshold)
                              for m in METHODS}

    ret_classes = _retrieval_classes(test, leaf)
    with timed("retrieval metrics", timings):
        retrieval = retrieval_metrics(emb, ret_classes, cfg.ks)
        # the same on the validation split: what a choice between trained models may look at
        val_retrieval = (retrieval_metrics(_embeddings(bundle, val),
                                           _retrieval_classes(val, leaf), cfg.ks)
                         if val is not None and len(val) >= 2 else {})
    queries = ret_classes[ret_classes >= 0]
    class_size = np.bincount(queries) if queries.size else np.zeros(0, dtype=np.int64)

    n_leaf = len(bundle.labels[leaf])
    baselines = {}
    with timed("baseline (a) logistic regression", timings):
        baselines["logreg"] = logreg_baseline(train, test, leaf, n_leaf, cfg, val=val)
    with timed("baseline (b) k-NN", timings):
        baselines["knn"] = knn_baseline(train, test, leaf, n_leaf, cfg, ret_classes)

    result = {
        "protocol": {
            "split": "test",
            "retrieval_database": "test split (x->x excludes the query itself)",
            "retrieval_hit": f"same leaf class ({leaf})",
            "retrieval_classes_from": ("category paths (rare classes included)"
                                       if test.categories is not None
                                       else f"{leaf} labels (rows with -1 skipped as queries)"),
            "ignored_rows": "label -1 (class below min_per_class) left out of top-k and macro-F1",
            "other_share": "share of all test rows whose best score (softmax probability for "
                           "linear, cosine for centroid) < other_threshold",
            "logreg": "StandardScaler + multinomial LogisticRegression (lbfgs) on concat(image, "
                      "text) frozen features of the training split",
            "knn": "cosine k-NN on L2-normalised frozen image features, similarity-weighted vote, "
                   "training split as database",
        },
        "n_train": len(train),
        "n_val": len(val) if val is not None else 0,
        "n_test": len(test),
        "leaf_head": leaf,
        "other_threshold": threshold,
        "heads": heads,
        "retrieval": retrieval,
        "validation_retrieval": val_retrieval,
        # x->x queries whose class has no other test item can never hit (counted as misses,
        # for HUSE and baseline (b) alike); cross-modal queries always can (their own pair).
        "retrieval_queries": {"queries": int(queries.size),
                              "x->x answerable": int((class_size[queries] >= 2).sum())},
        "baselines": baselines,
        "hardest_classes": hardest_classes(np.asarray(test.labels[leaf], dtype=np.int64),
                                           fused_linear.argmax(axis=1), bundle.labels[leaf],
                                           cfg.n_hardest),
        "seconds": timings,
    }
    artifacts = _artifacts(bundle, test, fused_linear, emb["fused"], cfg)
    f = heads[leaf]["fused"]["linear"]
    logger.info("leaf fused linear top1 %.4f (baseline a %.4f), image->image R@1 %.4f "
                "(baseline b %.4f)", f["top1"], baselines["logreg"]["top1"],
                retrieval["image->image"]["1"], baselines["knn"]["retrieval"]["image->image"]["1"])
    return result, artifacts


def _embeddings(bundle: EvalBundle, split: LabeledFeatures) -> dict[str, np.ndarray]:
    return {
        "image": bundle.embed_features(image_feats=split.image),
        "text": bundle.embed_features(text_feats=split.text, titles=split.titles),
        "fused": bundle.embed_features(image_feats=split.image, text_feats=split.text,
                                       titles=split.titles),
    }


def retrieval_metrics(emb: dict[str, np.ndarray], classes: np.ndarray,
                      ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Class-level recall@k of every RETRIEVAL_PAIRS pair within one split."""
    out = {}
    for name, q, b, exclude_self in RETRIEVAL_PAIRS:
        rec = class_recall_at_k(emb[q], classes, emb[b], classes, ks, exclude_self=exclude_self)
        out[name] = {str(k): v for k, v in rec.items()}
    return out


def hardest_classes(y_true: np.ndarray, y_pred: np.ndarray, names: list[str],
                    limit: int) -> list[dict[str, Any]]:
    """The ``limit`` labelled classes with the lowest recall (ties: larger support first), each
    with the class it is most often mistaken for: where a person should look first."""
    keep = y_true >= 0
    t, p = y_true[keep], y_pred[keep]
    support = np.bincount(t, minlength=len(names))
    correct = np.bincount(t[t == p], minlength=len(names))
    present = np.flatnonzero(support)
    recall = correct[present] / support[present]
    wrong_pairs, wrong_counts = np.unique(np.stack([t[t != p], p[t != p]]), axis=1,
                                          return_counts=True)
    out = []
    for i in np.lexsort((-support[present], recall))[:limit]:
        c = present[i]
        mine = wrong_pairs[0] == c
        entry = {"class": names[c], "support": int(support[c]), "recall": float(recall[i])}
        if mine.any():
            j = np.flatnonzero(mine)[np.argmax(wrong_counts[mine])]
            entry.update(confused_with=names[wrong_pairs[1, j]],
                         confused_share=float(wrong_counts[j] / support[c]))
        out.append(entry)
    return out


def _artifacts(bundle: EvalBundle, test: LabeledFeatures, fused_leaf_probs: np.ndarray,
               fused_emb: np.ndarray, cfg: EvalConfig) -> EvalArtifacts:
    leaf = bundle.leaf_head
    names = bundle.labels[leaf]
    classes, cm = confusion_matrix_top(np.asarray(test.labels[leaf], dtype=np.int64),
                                       fused_leaf_probs.argmax(axis=1), len(names),
                                       cfg.max_confusion_classes)
    groups = _top_groups(test, bundle)
    rows = np.arange(len(test))
    if len(rows) > cfg.map_max_points:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.map_max_points,
                                                              replace=False))
    return EvalArtifacts(
        confusion=cm,
        confusion_classes=[names[i] for i in classes],
        confusion_source=f"fused input, linear head, {leaf} (test split)",
        map_embeddings=np.asarray(fused_emb, dtype=np.float32)[rows],
        map_groups=[groups[i] for i in rows],
        seed=cfg.seed,
    )
