"""train.semantic_graph: readable class names and the class-name distance matrix."""

import numpy as np
import pytest

from train.semantic_graph import build_semantic_graph, class_distance_matrix, readable_class_name


def test_readable_class_name_is_leaf_first_without_repeats():
    assert readable_class_name("Accessories > Watches > Watches") == "Watches, Accessories"
    assert readable_class_name("Apparel > Topwear > Shirts") == "Shirts, Topwear, Apparel"
    assert readable_class_name("Footwear") == "Footwear"
    with pytest.raises(ValueError, match="empty level"):
        readable_class_name("Apparel >  > Shirts")


def test_distance_matrix_is_one_minus_cosine():
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    A = class_distance_matrix(emb)
    assert A.dtype == np.float32 and A.shape == (4, 4)
    np.testing.assert_allclose(A, A.T)
    np.testing.assert_array_equal(np.diag(A), 0.0)
    assert A[0, 1] == pytest.approx(0.0, abs=1e-6)  # same direction, other length
    assert A[0, 2] == pytest.approx(1.0) and A[0, 3] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="name_emb"):
        class_distance_matrix(np.zeros((0, 3)))


class LetterBackbone:
    """Embeds a name by its letter counts: names sharing words are close."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, names: list[str]) -> np.ndarray:
        self.seen.extend(names)
        return np.array([[name.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"]
                         for name in names], dtype=np.float32)


def test_build_semantic_graph_embeds_readable_names():
    bb = LetterBackbone()
    labels = ["Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts", "Home > Mugs"]
    A = build_semantic_graph(labels, bb)
    assert bb.seen == ["Shirts, Topwear, Apparel", "Tshirts, Topwear, Apparel", "Mugs, Home"]
    assert A.shape == (3, 3) and A[0, 1] < A[0, 2]  # shirts nearer tshirts than mugs
