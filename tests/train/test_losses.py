"""Each HUSE loss on hand-made tensors: values, gradients, margin behaviour."""

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import classification_loss, cross_modal_gap_loss, semantic_graph_loss


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_classification_loss_value_ignores_unlabelled_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]], requires_grad=True)
    labels = torch.tensor([0, 1, -1])
    loss = classification_loss(logits, labels)
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[2] == 0)  # the ignored row gets no gradient
    # d/dz of mean CE = (softmax - onehot) / n_labelled
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert torch.allclose(logits.grad[0], (p - torch.tensor([1.0, 0.0])) / 2, atol=1e-6)


def test_classification_loss_all_ignored_is_zero_with_graph():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = classification_loss(logits, torch.full((3,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_semantic_graph_loss_value_and_margin():
    emb = unit([1, 0], [0, 1], [1, 1])  # d(0,1)=1, d(0,2)=d(1,2)=1-1/sqrt2
    labels = torch.tensor([0, 1, 0])
    A = torch.tensor([[0.0, 0.4], [0.4, 0.0]])
    d02 = 1 - 1 / math.sqrt(2)
    # all ordered pairs i != j have A < 0.5: (0,1),(1,0) target .4, (0,2),(2,0) target 0,
    # (1,2),(2,1) target .4
    expected = (2 * (1 - 0.4) ** 2 + 2 * d02**2 + 2 * (d02 - 0.4) ** 2) / 6
    got = semantic_graph_loss(emb, labels, A, margin=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # margin below A_01: only same-class pairs (0,2),(2,0) remain
    got = semantic_graph_loss(emb, labels, A, margin=0.3)
    assert got.item() == pytest.approx(d02**2, rel=1e-5)


def test_semantic_graph_loss_zero_when_distances_match_and_gradient_pulls_same_class():
    emb = unit([1, 0], [0.6, 0.8])  # cosine distance 0.4
    A = torch.tensor([[0.0, 0.4], [0.4, 0.0]])
    loss = semantic_graph_loss(emb, torch.tensor([0, 1]), A, 1.0)
    assert loss.item() == pytest.approx(0, abs=1e-6)
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    loss = semantic_graph_loss(F.normalize(x, dim=1), torch.tensor([0, 0]), A, 1.0)
    loss.backward()
    # same class: gradient descent moves x1 toward x0 (cosine to x0 rises)
    step = F.normalize(x - 0.1 * x.grad, dim=1)
    assert step[0] @ step[1] > 0.6


def test_semantic_graph_loss_skips_unlabelled_and_far_pairs():
    emb = unit([1, 0], [0, 1], [-1, 0])
    A = torch.tensor([[0.0, 0.9], [0.9, 0.0]])
    # only one labelled row of class 0 and one of class 1 with A >= margin: nothing to constrain
    loss = semantic_graph_loss(emb, torch.tensor([0, 1, -1]), A, margin=0.5)
    assert loss.item() == 0.0


def test_cross_modal_gap_loss_value_and_gradient():
    img = unit([1, 0], [0, 1])
    txt = unit([1, 0], [1, 0])
    assert cross_modal_gap_loss(img, txt).item() == pytest.approx(0.5)
    assert cross_modal_gap_loss(img, img).item() == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[1.0, 0.0]], requires_grad=True)
    cross_modal_gap_loss(t, torch.tensor([[0.0, 1.0]])).backward()
    assert torch.allclose(t.grad, torch.tensor([[0.0, -1.0]]))


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="(3, 2)"):
        cross_modal_gap_loss(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="square"):
        semantic_graph_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long),
                            torch.zeros(2, 3), 0.5)


def test_contrastive_loss_prefers_own_pairs_and_spares_same_class_products():
    from train.losses import contrastive_loss

    e = torch.nn.functional.normalize(torch.eye(4)[:, :4] + 0.01, dim=1)
    aligned = contrastive_loss(e, e, 0.1)
    shuffled = contrastive_loss(e, e[[1, 0, 3, 2]], 0.1)
    assert aligned < shuffled
    assert torch.allclose(contrastive_loss(e, e, 0.1), contrastive_loss(e, e.clone(), 0.1))
    # rows 0 and 1 share a class: row 0's text 1 is no longer a competing negative
    labels = torch.tensor([0, 0, 1, -1])
    close = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    assert contrastive_loss(close, close, 0.1, labels) < contrastive_loss(close, close, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(e, e, 0.0)
