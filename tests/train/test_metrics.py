import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, top_k_accuracy_score

from huse_common import topk
from train.metrics import (
    class_recall_at_k,
    confusion_matrix_top,
    knn_search,
    macro_f1,
    topk_accuracy,
)


class TestTopkAccuracy:
    def test_hand_computed(self):
        scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
        y = np.array([1, 1, 0, 2])
        assert topk_accuracy(scores, y, 1) == pytest.approx(1 / 4)
        assert topk_accuracy(scores, y, 2) == pytest.approx(2 / 4)
        assert topk_accuracy(scores, y, 3) == pytest.approx(1.0)
        assert topk_accuracy(scores, y, 10) == pytest.approx(1.0)

    def test_ignores_unlabelled_rows(self):
        scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
        assert topk_accuracy(scores, np.array([0, -1, 1]), 1) == pytest.approx(0.5)
        assert np.isnan(topk_accuracy(scores, np.array([-1, -1, -1]), 1))

    def test_ties_count_against_the_true_class(self):
        scores = np.full((4, 5), 0.2)
        assert topk_accuracy(scores, np.array([0, 1, 2, 3]), 1) == 0.0

    def test_matches_sklearn(self):
        rng = np.random.default_rng(0)
        scores = rng.normal(size=(300, 12))
        y = rng.integers(0, 12, size=300)
        for k in (1, 3, 5):
            ref = top_k_accuracy_score(y, scores, k=k, labels=np.arange(12))
            assert topk_accuracy(scores, y, k) == pytest.approx(ref)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="shape"):
            topk_accuracy(np.zeros((3, 2)), np.array([0, 1]), 1)
        with pytest.raises(ValueError, match="out of range"):
            topk_accuracy(np.zeros((2, 2)), np.array([0, 2]), 1)
        with pytest.raises(TypeError, match="integer"):
            topk_accuracy(np.zeros((2, 2)), np.array([0.0, 1.0]), 1)
        with pytest.raises(ValueError, match="k must be"):
            topk_accuracy(np.zeros((2, 2)), np.array([0, 1]), 0)


class TestMacroF1:
    def test_hand_computed(self):
        # class 0: tp 1, support 2, predicted 1 -> f1 2/3; class 1: tp 1, support 1, predicted 2
        # -> f1 2/3; class 2: never true, predicted once -> f1 0.
        y_true = np.array([0, 0, 1, 3, 3])
        y_pred = np.array([0, 1, 1, 3, 2])
        f1_3 = 2 * 1 / (2 + 1)
        expected = (2 / 3 + 2 / 3 + 0 + f1_3) / 4
        assert macro_f1(y_true, y_pred) == pytest.approx(expected)

    def test_matches_sklearn_and_drops_unlabelled(self):
        rng = np.random.default_rng(1)
        y_true = rng.integers(-1, 15, size=500)
        y_pred = np.where(rng.random(500) < 0.6, y_true.clip(0), rng.integers(0, 15, size=500))
        keep = y_true >= 0
        ref = f1_score(y_true[keep], y_pred[keep], average="macro", zero_division=0)
        assert macro_f1(y_true, y_pred) == pytest.approx(ref)

    def test_perfect_and_empty(self):
        y = np.array([2, 0, 1, 1])
        assert macro_f1(y, y) == pytest.approx(1.0)
        assert np.isnan(macro_f1(np.array([-1]), np.array([0])))

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"\(3,\) vs \(2,\)"):
            macro_f1(np.array([0, 1, 2]), np.array([0, 1]))


def _reference_recall(xq, yq, xb, yb, ks, exclude_self):
    sims = xq @ xb.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    out = {}
    for k in ks:
        hits = [(yb[order[i, :k]] == yq[i]).any() for i in range(len(xq)) if yq[i] >= 0]
        out[k] = float(np.mean(hits))
    return out


class TestKnnSearch:
    def test_matches_full_sort_across_blocks(self, monkeypatch):
        monkeypatch.setattr(topk, "MAX_SCORES", 8 * 40)  # query blocks of 8
        rng = np.random.default_rng(4)
        xb = rng.normal(size=(40, 6)).astype(np.float32)
        xq = rng.normal(size=(19, 6)).astype(np.float32)
        D, I = knn_search(xq, xb, 5)  # noqa: E741
        sims = xq @ xb.T
        ref_I = np.argsort(-sims, axis=1)[:, :5]
        np.testing.assert_array_equal(I, ref_I)
        np.testing.assert_allclose(D, np.take_along_axis(sims, ref_I, axis=1), rtol=1e-6)

    def test_matches_faiss_flat_ip(self):
        faiss = pytest.importorskip("faiss")
        rng = np.random.default_rng(5)
        xb = rng.normal(size=(300, 16)).astype(np.float32)
        xq = rng.normal(size=(40, 16)).astype(np.float32)
        index = faiss.IndexFlatIP(16)
        index.add(xb)
        D_ref, I_ref = index.search(xq, 10)
        D, I = knn_search(xq, xb, 10)  # noqa: E741
        np.testing.assert_array_equal(I, I_ref)
        np.testing.assert_almost_equal(D, D_ref, decimal=4)

    def test_exclude_self_drops_the_diagonal(self, monkeypatch):
        monkeypatch.setattr(topk, "MAX_SCORES", 3 * 7)
        x = np.eye(7, dtype=np.float32) * 2 + 0.01
        _, I = knn_search(x, x, 6, exclude_self=True)  # noqa: E741
        assert all(i not in row for i, row in enumerate(I.tolist()))
        assert all(sorted(row + [i]) == list(range(7)) for i, row in enumerate(I.tolist()))

    def test_k_out_of_range(self):
        x = np.zeros((3, 2), dtype=np.float32)
        with pytest.raises(ValueError, match="k = 3"):
            knn_search(x, x, 3, exclude_self=True)


class TestClassRecallAtK:
    def test_hand_computed(self):
        # 1-D "embeddings" on a line: nearest neighbours are easy to read off.
        xb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
        yb = np.array([0, 1, 1, 0])
        xq = np.array([[1.0, 0.05], [0.05, 1.0]], dtype=np.float32)
        yq = np.array([1, 1])
        # query 0 ranks items 0 (class 0), 1 (class 1): hit at 2; query 1 ranks 2 (class 1) first.
        assert class_recall_at_k(xq, yq, xb, yb, ks=(1, 2)) == {1: 0.5, 2: 1.0}

    def test_exclude_self(self):
        x = np.eye(3, dtype=np.float32) + 0.1
        y = np.array([0, 0, 1])
        # without exclusion every query finds itself; with it class 1 has no other member.
        assert class_recall_at_k(x, y, x, y, ks=(1,)) == {1: 1.0}
        assert class_recall_at_k(x, y, x, y, ks=(1, 2), exclude_self=True) == {
            1: pytest.approx(2 / 3),
            2: pytest.approx(2 / 3),
        }

    def test_matches_brute_force_across_blocks(self, monkeypatch):
        monkeypatch.setattr(topk, "MAX_SCORES", 7 * 50)  # blocks of 7, a ragged last one
        rng = np.random.default_rng(2)
        x = rng.normal(size=(50, 8)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y = rng.integers(-1, 6, size=50)
        ks = (1, 5, 10)
        for exclude_self in (False, True):
            got = class_recall_at_k(x, y, x, y, ks, exclude_self=exclude_self)
            ref = _reference_recall(x, y, x, y, ks, exclude_self)
            assert got == pytest.approx(ref)

    def test_k_larger_than_database(self):
        x = np.eye(3, dtype=np.float32)
        y = np.array([0, 1, 2])
        assert class_recall_at_k(x, y, x, y, ks=(1, 10), exclude_self=True) == {1: 0.0, 10: 0.0}

    def test_unlabelled_database_items_never_hit(self):
        xq = np.array([[1.0, 0.0]], dtype=np.float32)
        xb = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        result = class_recall_at_k(xq, np.array([0]), xb, np.array([-1, 0]), ks=(1, 2))
        assert result == {1: 0.0, 2: 1.0}

    def test_bad_arguments(self):
        x = np.zeros((3, 4), dtype=np.float32)
        y = np.zeros(3, dtype=np.int64)
        with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 5\)"):
            class_recall_at_k(x, y, np.zeros((3, 5)), y)
        with pytest.raises(ValueError, match="row-aligned"):
            class_recall_at_k(x, y, x[:2], y[:2], exclude_self=True)
        with pytest.raises(ValueError, match="ks must be"):
            class_recall_at_k(x, y, x, y, ks=(0, 1))


class TestConfusionMatrixTop:
    def test_hand_computed(self):
        y_true = np.array([2, 2, 2, 0, 0, 1, -1])
        y_pred = np.array([2, 0, 1, 0, 2, 1, 0])
        classes, cm = confusion_matrix_top(y_true, y_pred, n_classes=3, max_classes=2)
        assert classes.tolist() == [2, 0]
        # columns: predicted 2, predicted 0, predicted another class
        assert cm.tolist() == [[1, 1, 1], [1, 1, 0]]

    def test_all_classes_matches_sklearn(self):
        rng = np.random.default_rng(3)
        y_true = rng.integers(0, 6, size=200)
        y_pred = rng.integers(0, 6, size=200)
        classes, cm = confusion_matrix_top(y_true, y_pred, n_classes=6, max_classes=6)
        ref = confusion_matrix(y_true, y_pred, labels=classes)
        np.testing.assert_array_equal(cm[:, :-1], ref)
        assert cm[:, -1].sum() == 0
        np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(y_true)[classes])

    def test_label_out_of_range(self):
        with pytest.raises(ValueError, match="n_classes = 2"):
            confusion_matrix_top(np.array([0, 1]), np.array([0, 2]), n_classes=2)
