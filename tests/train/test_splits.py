"""Stratified splits, the small-class rule, label spaces and oversampling."""

import numpy as np
import pytest

from train.splits import (
    attribute_values,
    build_label_spaces,
    level_heads,
    oversample,
    stratified_split,
)


def test_stratified_split_is_seeded_disjoint_and_stratified():
    strata = ["a"] * 50 + ["b"] * 20 + ["c"] * 2 + ["d"] * 1 + ["e"] * 3
    s1 = stratified_split(strata, 0.1, 0.2, seed=7)
    s2 = stratified_split(strata, 0.1, 0.2, seed=7)
    s3 = stratified_split(strata, 0.1, 0.2, seed=8)
    assert all(np.array_equal(x, y) for x, y in
               [(s1.train, s2.train), (s1.val, s2.val), (s1.test, s2.test)])
    assert not np.array_equal(s1.test, s3.test)
    allrows = np.concatenate([s1.train, s1.val, s1.test])
    assert sorted(allrows.tolist()) == list(range(len(strata)))
    test_classes = [strata[i] for i in s1.test]
    assert test_classes.count("a") == 10 and test_classes.count("b") == 4
    assert test_classes.count("e") == 1 and [strata[i] for i in s1.val].count("e") == 1
    assert s1.unsplit == {"c": 2, "d": 1}  # too small for three splits: train only
    assert s1.summary()["train_only_classes"] == {"c": 2, "d": 1}


def test_level_heads_pad_short_paths_with_their_leaf():
    heads = level_heads([("A", "B", "C"), ("A", "D")])
    assert heads == {"level1": ["A", "A"], "level2": ["A > B", "A > D"],
                     "level3": ["A > B > C", "A > D"]}


def test_label_spaces_leave_out_rare_classes():
    values = {"level1": ["x"] * 5 + ["y"] * 2 + ["z"]}
    values.update(attribute_values([{"g": "m"}] * 6 + [{"g": ""}, {}], ["g"]))
    spaces = build_label_spaces(values, np.arange(8), min_per_class=3)
    assert spaces.labels["level1"] == ["x"]
    assert spaces.y["level1"].tolist() == [0] * 5 + [-1] * 3
    assert spaces.excluded["level1"] == {"y": 2, "z": 1}
    assert spaces.y["attr:g"].tolist() == [0] * 6 + [-1, -1]
    with pytest.raises(ValueError, match="no class"):
        build_label_spaces({"level1": ["x", "y"]}, np.arange(2), min_per_class=3)


def test_oversample_lifts_rare_classes_to_percentile():
    y = np.array([0] * 10 + [1] * 2 + [2] * 4 + [-1] * 3)
    idx = np.arange(len(y))
    out = oversample(idx, y, percentile=100, seed=0)
    counts = np.bincount(y[out][y[out] >= 0])
    assert counts.tolist() == [10, 10, 10]
    assert np.sum(y[out] == -1) == 3  # unlabelled rows are never duplicated
    assert set(out[len(idx):]) <= set(np.flatnonzero(y >= 1))
    with pytest.raises(ValueError, match="percentile"):
        oversample(idx, y, percentile=0, seed=0)
