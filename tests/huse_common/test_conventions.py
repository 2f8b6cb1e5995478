"""huse_common: each shared convention, tested once where it is defined."""

import numpy as np
import pytest

from huse_common import atomic, limits
from huse_common.categories import below, join_path, normalize_path, prefix, split_path
from huse_common.topk import knn, topk
from huse_common.vectors import PLAIN_SUM, fuse, l2_normalize


def test_category_paths_one_rule():
    assert split_path("A>B >  C") == ("A", "B", "C")
    assert normalize_path(" A > B ") == "A > B" == join_path(["A", " B"])
    assert prefix("A > B > C", 2) == "A > B" and prefix("A", 3) == "A"
    for bad in ("A >  > C", " > ", "", "A >"):
        with pytest.raises(ValueError, match="empty level"):
            split_path(bad)
    with pytest.raises(ValueError, match="empty level"):
        join_path(["A", " "])
    lo, hi = below("A > B")
    inside = ["A > B > C", "A > B > Z z"]
    outside = ["A > B", "A > BC", "A > B!", "A > C"]
    assert all(lo <= p < hi for p in inside) and not any(lo <= p < hi for p in outside)


def test_topk_pads_and_breaks_ties_by_column():
    scores = np.array([[0.5, 0.9, 0.5], [0.1, 0.2, 0.3]], np.float32)
    D, I = topk(scores, 5)  # noqa: E741
    np.testing.assert_array_equal(I, [[1, 0, 2, -1, -1], [2, 1, 0, -1, -1]])
    assert np.isneginf(D[:, 3:]).all() and D[0, 0] == pytest.approx(0.9)


def test_knn_matches_a_full_sort_across_blocks():
    rng = np.random.default_rng(0)
    xb, xq = rng.normal(size=(30, 4)), rng.normal(size=(11, 4))
    D, I = knn(xq, xb, 4, max_scores=3 * 30)  # noqa: E741
    ref = np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(I, ref)
    _, I_self = knn(xb, xb, 3, exclude_self=True, max_scores=7 * 30)
    assert all(i not in row for i, row in enumerate(I_self))


def test_l2_normalize_and_fusion():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert l2_normalize(x).dtype == np.float32 and l2_normalize([[1, 1]]).dtype == np.float64
    img, txt = np.array([[2.0, 0.0]]), np.array([[0.0, 5.0]])
    np.testing.assert_allclose(fuse(img, txt, PLAIN_SUM), [[2 ** -0.5, 2 ** -0.5]])
    np.testing.assert_allclose(fuse(img, txt, 1.0), [[1.0, 0.0]])


def test_rename_is_atomic_and_write_atomic_returns_the_digest(tmp_path):
    import hashlib

    digest = atomic.write_atomic(tmp_path / "f", b"new")
    assert (tmp_path / "f").read_bytes() == b"new" and digest == hashlib.sha256(b"new").hexdigest()
    (tmp_path / "d").mkdir()
    atomic.rename(tmp_path / "d", tmp_path / "e")
    assert (tmp_path / "e").is_dir() and not (tmp_path / "d").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_limits_agree():
    from embedder.catalog import RowLimits
    from index.plan import IndexPlan

    assert limits.DEFAULT_K <= limits.MAX_K <= limits.MAX_INDEX_K == IndexPlan().max_k
    assert RowLimits().max_title_chars == limits.MAX_TITLE_CHARS
