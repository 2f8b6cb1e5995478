"""embedder.backbone_tail: a tuned tail is exact to split, loads over the packaged weights on
every engine, and keys its exports and features apart from the packaged model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from embedder import backbones
from embedder.backbone_tail import TunedTail, tail_module, trunk_map_shape, trunk_module
from embedder.backbones import calibrate_int8_ranges, load_backbone
from embedder.errors import BackboneError

SPEC = "efficientnet-lite0"
FIRST = 13


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(6):
        x = np.full((180, 140, 3), 255, np.uint8)
        top, left = rng.integers(5, 50, 2)
        x[top: top + 110, left: left + 70] = rng.integers(0, 255, 3)
        if i % 2:
            x[top: top + 20] = 0  # asymmetric, so the mirrored maps differ
        out.append(Image.fromarray(x))
    return out


@pytest.fixture(scope="module")
def tail() -> TunedTail:
    """The packaged Lite0 with its blocks 13+ and head conv moved by a seeded perturbation."""
    model = load_backbone(SPEC, device="cpu", engine="torch").model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("_blocks.13.", "_blocks.14.", "_blocks.15.", "_conv_head.")):
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
    return TunedTail.from_model(model, FIRST)


def test_tail_holds_only_the_trained_blocks_and_reloads_exactly(one_thread, photos, tail):
    from safetensors.torch import load

    names = set(load(tail.weights))
    assert names and all(n.startswith(("_blocks.13.", "_blocks.14.", "_blocks.15.",
                                       "_conv_head.")) for n in names)
    tuned = load_backbone(SPEC, device="cpu", engine="torch", tail=tail)
    packaged = load_backbone(SPEC, device="cpu", engine="torch")
    again = load_backbone(SPEC, device="cpu", engine="torch", tail=tail)
    out = tuned.encode(photos)
    assert np.array_equal(out, again.encode(photos))
    assert not np.allclose(out, packaged.encode(photos), atol=1e-3)  # the tail is in effect
    assert tuned.cache_namespace != packaged.cache_namespace
    assert tail.weights_digest in tuned.cache_namespace


def test_trunk_then_tail_equals_the_whole_model(one_thread, photos, tail):
    """Training runs the tail on cached trunk maps: their composition must be the backbone,
    for the photo as is and mirrored (the second half of each trunk row)."""
    backbone = load_backbone(SPEC, device="cpu", engine="torch", tail=tail)
    model = backbone.model.to(memory_format=torch.contiguous_format)
    pixels = torch.from_numpy(backbone.preprocess_batch(photos))
    shape = trunk_map_shape(model, FIRST, backbone.preprocess.size)
    with torch.inference_mode():
        maps = trunk_module(model, FIRST)(pixels).reshape(len(photos), 2, *shape)
        head = tail_module(model, FIRST, n_classes=3, dropout=0.2).eval()
        as_is, mirrored = head.features(maps[:, 0]), head.features(maps[:, 1])
    assert np.allclose(as_is.numpy(), backbone.forward_pixels(pixels), atol=1e-4)
    flipped = backbone.forward_pixels(torch.flip(pixels, dims=[3]))
    assert np.allclose(mirrored.numpy(), flipped, atol=1e-4)
    assert not np.allclose(as_is.numpy(), mirrored.numpy(), atol=1e-3)


def test_tuned_onnx_matches_torch_and_is_cached_apart(one_thread, photos, tail, monkeypatch,
                                                      tmp_path):
    monkeypatch.setenv("HUSE_ONNX_DIR", str(tmp_path))
    torch_bb = load_backbone(SPEC, device="cpu", engine="torch", tail=tail)
    onnx_bb = load_backbone(SPEC, device="cpu", engine="onnx", tail=tail)
    out, expected = onnx_bb.encode(photos), torch_bb.encode(photos)
    cos = (out * expected).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 1 - 1e-4
    assert onnx_bb.cache_namespace == torch_bb.cache_namespace
    assert backbones.onnx_model_path(SPEC, tail=tail) != backbones.onnx_model_path(SPEC)
    assert [p.name for p in tmp_path.iterdir()] == [backbones.onnx_model_path(SPEC, tail=tail).name]
    # no int8 ranges: "auto" runs the fp32 export, an explicit int8 engine is refused
    assert load_backbone(SPEC, device="cpu", engine="auto", tail=tail).engine == "onnx"
    with pytest.raises(BackboneError, match="no int8 activation ranges"):
        load_backbone(SPEC, device="cpu", engine="onnx-int8", tail=tail)


def test_tuned_int8_uses_the_tails_own_ranges(one_thread, photos, tail, monkeypatch, tmp_path):
    monkeypatch.setenv("HUSE_ONNX_DIR", str(tmp_path))
    fp32 = load_backbone(SPEC, device="cpu", engine="onnx", tail=tail)
    ranges = calibrate_int8_ranges(SPEC, fp32.preprocess_batch(photos), tmp_path / "r.json",
                                   tail)
    calibrated = TunedTail(tail.first_block, tail.weights, ranges.read_bytes())
    int8 = load_backbone(SPEC + "+colour", device="cpu", engine="auto", tail=calibrated)
    assert int8.engine == "onnx-int8"
    assert int8.quantisation == "static-" + calibrated.ranges_digest
    packaged = load_backbone(SPEC + "+colour", device="cpu", engine="onnx-int8")
    assert int8.cache_namespace != packaged.cache_namespace
    out, expected = int8.encode(photos)[:, :1280], fp32.encode(photos)
    cos = (out * expected).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(expected, axis=1)
    assert 0.9 < cos.min() < 1 - 1e-5


def test_a_tail_that_does_not_fit_is_refused(tail):
    with pytest.raises(BackboneError, match="does not fit"):
        load_backbone("efficientnet-lite1", device="cpu", engine="torch",
                      tail=TunedTail(12, tail.weights))
    with pytest.raises(BackboneError, match="needs an EfficientNet"):
        load_backbone("minilm", device="cpu", engine="torch", tail=tail)
