"""bench_tail_finetune compares arms fairly only if each trains exactly its own weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from bench.bench_tail_finetune import make_tail  # noqa: E402
from embedder.backbones import load_backbone  # noqa: E402

TRUNK = 11  # blocks whose maps the bench caches


def trained_parts(tail) -> set[str]:
    """'fc', 'head' or 'blocks.<i>' (i counted from the first block after the trunk)."""
    parts = set()
    for name, weight in tail.named_parameters():
        if weight.requires_grad:
            first, second = name.split(".")[:2]
            parts.add(f"blocks.{second}" if first == "blocks" else first)
    return parts


def test_each_arm_trains_its_blocks_the_head_conv_and_the_linear_head_only():
    model = load_backbone("efficientnet-lite0", "cpu", engine="torch").model
    frozen_arm = len(model._blocks) + 1
    assert trained_parts(make_tail(model, TRUNK, frozen_arm, 7)) == {"fc"}
    assert trained_parts(make_tail(model, TRUNK, 15, 7)) == {"blocks.4", "head", "fc"}
    assert trained_parts(make_tail(model, TRUNK, 13, 7)) == {
        "blocks.2", "blocks.3", "blocks.4", "head", "fc"}
    tail = make_tail(model, TRUNK, 13, 7)
    maps = torch.zeros(2, 112, 14, 14)  # what blocks 0-10 give a 224-px photo
    assert tail(maps).shape == (2, 7) and tail.features(maps).shape == (2, 1280)
    with torch.no_grad():  # arms train copies: the next arm starts from the same backbone
        tail.head.weight.add_(1.0)
    assert not torch.equal(tail.head.weight, model._conv_head.weight)
