"""Seeded stratified splits, per-head label spaces and class-balanced oversampling.

Split rule (per leaf class of n products, shuffled with the seed):
- n < 3: the class cannot be split three ways, so all its products go to train (they stay in
  the index; the report lists these classes);
- n >= 3: n_test = max(1, round(n * test_frac)), n_val = max(1, round(n * val_frac)) (0 when the
  fraction is 0), the rest to train; if train would be empty, val then test give one back.
Label spaces: a head keeps the classes with at least `min_per_class` training products; the
others get label -1 (ignored by the losses and classification metrics, kept for retrieval).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from huse_common.categories import join_path

logger = logging.getLogger(__name__)

MIN_SPLITTABLE = 3  # a class needs one product in each of train, val and test


@dataclass
class Splits:
    """Row indices into the product list, each sorted; `unsplit` lists train-only classes."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unsplit: dict[str, int] = field(default_factory=dict)  # class -> size, all kept in train

    def summary(self) -> dict:
        return {
            "train": int(len(self.train)),
            "val": int(len(self.val)),
            "test": int(len(self.test)),
            "rule": "stratified by leaf class; classes with fewer than "
            f"{MIN_SPLITTABLE} products go to train only",
            "train_only_classes": dict(sorted(self.unsplit.items())),
        }


@dataclass
class LabelSpaces:
    """Per head: the kept class names (sorted) and the int64 label of every product."""

    labels: dict[str, list[str]]
    y: dict[str, np.ndarray]
    excluded: dict[str, dict[str, int]]  # head -> {class: training count} left out

    def summary(self, min_per_class: int) -> dict:
        return {
            "min_per_class": min_per_class,
            "rule": f"classes with fewer than {min_per_class} training products are left out of "
            "the head's label space (label -1: no loss, no classification metric) but their "
            "products stay in the index and in retrieval evaluation",
            "heads": {
                head: {
                    "n_classes": len(self.labels[head]),
                    "n_excluded": len(self.excluded[head]),
                    "excluded": dict(sorted(self.excluded[head].items())),
                }
                for head in self.labels
            },
        }


def level_heads(categories: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """Labels at every level: level i = ' > '.join(path[:i]); short paths repeat their leaf."""
    if not categories:
        raise ValueError("no categories given")
    depth = max(len(c) for c in categories)
    if depth == 0:
        raise ValueError("every category path is empty")
    return {
        f"level{i}": [join_path(tuple(c)[: min(i, len(c))]) for c in categories]
        for i in range(1, depth + 1)
    }


def attribute_values(
    attributes: Sequence[dict[str, str]], columns: Sequence[str]
) -> dict[str, list[str | None]]:
    """Head 'attr:<column>' per column; empty or missing values become None (label -1)."""
    return {
        f"attr:{col}": [(a.get(col) or "").strip() or None for a in attributes] for col in columns
    }


def stratified_split(
    strata: Sequence[str], val_frac: float, test_frac: float, seed: int
) -> Splits:
    """Split row indices per stratum (leaf class) by the module's rule."""
    if val_frac < 0 or test_frac < 0 or val_frac + test_frac >= 1:
        raise ValueError(f"bad fractions val_frac={val_frac}, test_frac={test_frac}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        by_class.setdefault(s, []).append(i)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    unsplit: dict[str, int] = {}
    for name in sorted(by_class):
        rows = np.array(by_class[name])
        rng.shuffle(rows)
        n = len(rows)
        if n < MIN_SPLITTABLE:
            unsplit[name] = n
            train.extend(rows.tolist())
            continue
        n_test = max(1, round(n * test_frac)) if test_frac > 0 else 0
        n_val = max(1, round(n * val_frac)) if val_frac > 0 else 0
        while n - n_test - n_val < 1:
            if n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        test.extend(rows[:n_test].tolist())
        val.extend(rows[n_test : n_test + n_val].tolist())
        train.extend(rows[n_test + n_val :].tolist())
    if unsplit:
        logger.info("%d classes with fewer than %d products kept in train only",
                    len(unsplit), MIN_SPLITTABLE)
    as_idx = lambda rows: np.array(sorted(rows), dtype=np.int64)  # noqa: E731
    return Splits(as_idx(train), as_idx(val), as_idx(test), unsplit)


def build_label_spaces(
    head_values: dict[str, Sequence[str | None]], train_idx: np.ndarray, min_per_class: int
) -> LabelSpaces:
    """Keep, per head, the classes with >= min_per_class training products."""
    labels: dict[str, list[str]] = {}
    y: dict[str, np.ndarray] = {}
    excluded: dict[str, dict[str, int]] = {}
    for head, values in head_values.items():
        counts = Counter(values[i] for i in train_idx if values[i] is not None)
        kept = sorted(c for c, n in counts.items() if n >= min_per_class)
        if not kept:
            raise ValueError(f"head {head!r}: no class has >= {min_per_class} training products "
                             f"(counts {dict(counts)})")
        all_classes = {v for v in values if v is not None}
        excluded[head] = {c: counts.get(c, 0) for c in sorted(all_classes - set(kept))}
        index = {c: j for j, c in enumerate(kept)}
        y[head] = np.array([index.get(v, -1) for v in values], dtype=np.int64)
        labels[head] = kept
        if excluded[head]:
            logger.info("head %s: %d classes kept, %d left out (< %d training products)",
                        head, len(kept), len(excluded[head]), min_per_class)
    return LabelSpaces(labels, y, excluded)


def oversample(
    train_idx: np.ndarray, y: np.ndarray, percentile: float, seed: int
) -> np.ndarray:
    """Return train_idx plus extra draws (with replacement) lifting each labelled class to the
    given percentile of training class sizes; rows with label -1 are never duplicated."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    labelled = train_idx[y[train_idx] >= 0]
    if len(labelled) == 0:
        return train_idx.copy()
    classes, sizes = np.unique(y[labelled], return_counts=True)
    target = int(np.ceil(np.percentile(sizes, percentile)))
    rng = np.random.default_rng(seed)
    extra = [
        rng.choice(labelled[y[labelled] == c], size=target - n, replace=True)
        for c, n in zip(classes, sizes, strict=True)
        if n < target
    ]
    if extra:
        logger.info("oversampling: %d extra rows, classes lifted to %d", sum(map(len, extra)),
                    target)
    return np.concatenate([train_idx, *extra]).astype(np.int64)
