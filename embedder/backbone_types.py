"""The frozen backbone objects: preprocessing, batched `encode`, the feature-cache key.
Loading them by spec is embedder.backbones; torch is imported inside the methods."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from embedder.colour import SUFFIX as COLOUR_SUFFIX
from embedder.colour import ColourHistogram

# Bump when preprocessing changes, so cached features of the old preprocessing are never reused.
PREPROCESS_VERSION = 1
# Tokenizer outputs a text model takes (the exported ONNX graph names its inputs after them).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TextConfig:
    """Tokenisation settings for text backbones (titles are short; 128 tokens is plenty)."""

    max_length: int = 128


def default_device() -> str:
    """CUDA when torch sees a GPU, else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class SquarePadPreprocess:
    """PIL RGB -> normalised CHW float tensor: pad to a white square, resize, (x - mean) / std.

    Padding instead of cropping keeps the whole product (catalog photos are portrait, on white).
    Picklable, so DataLoader workers can run it.
    """

    size: int
    mean: float = 0.5
    std: float = 0.5

    def __call__(self, img: Image.Image) -> Any:
        import torch

        side = max(img.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        resized = canvas.resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.float32) / 255.0
        pixels = (pixels - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) of the model input, to recover the pixels' colours."""
        return [self.mean] * 3, [self.std] * 3


@dataclass(frozen=True)
class HFImagePreprocess:
    """PIL RGB -> CHW tensor with a transformers image processor (the model's own recipe)."""

    processor: Any

    def __call__(self, img: Image.Image) -> Any:
        return self.processor(images=[img], return_tensors="pt")["pixel_values"][0]

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) of the model input, to recover the pixels' colours."""
        p = self.processor
        if not getattr(p, "do_normalize", True):
            return [0.0] * 3, [1.0] * 3
        return list(p.image_mean), list(p.image_std)


class Backbone:
    """A frozen encoder: `encode(items) -> (n, dim) float32`, not normalised."""

    kind: str

    def __init__(self, spec: str, dim: int, model: Any, device: str, engine: str = "torch") -> None:
        self.spec = spec
        self.dim = dim
        self.model = model  # a torch module, or an onnxruntime.InferenceSession (engine "onnx")
        self.device = device
        self.engine = engine
        # int8 only: how the model was quantised, when that is not the engine's one way
        # (static int8 image models name their activation ranges), so features never mix.
        self.quantisation = ""
        # weights digest of a trained tail (embedder.backbone_tail) loaded over the packaged
        # weights; "" for the packaged model
        self.tail_digest = ""

    @property
    def onnx(self) -> bool:
        """Whether `model` is an onnxruntime session (engines "onnx" and "onnx-int8")."""
        return self.engine.startswith("onnx")

    @property
    def cache_namespace(self) -> str:
        """Identity of the vectors this backbone produces; the feature cache is keyed by it.
        int8 features are close to fp32's but not equal, so they have their own namespace."""
        precision = "|int8" if self.engine.endswith("int8") else ""
        if precision and self.quantisation:
            precision += f"-{self.quantisation}"
        tail = f"|tail={self.tail_digest}" if self.tail_digest else ""
        return f"{self.spec}|{self.kind}|dim={self.dim}|pre={PREPROCESS_VERSION}{tail}{precision}"

    def _autocast(self) -> Any:
        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, dim={self.dim}, device={self.device!r})"


class ImageBackbone(Backbone):
    """Image encoder: `preprocess` (picklable, PIL -> CHW tensor) then `forward_pixels`.

    `encode(images)` is `encode_preprocessed(preprocess_batch(images))` chunk by chunk; callers
    that want the two halves on different threads call them separately.
    """

    kind = "image"

    def __init__(
        self,
        spec: str,
        dim: int,
        model: Any,
        device: str,
        preprocess: Callable[[Image.Image], Any],
        features: Callable[[Any, Any], Any] | None,
        engine: str = "torch",
        colour: ColourHistogram | None = None,
    ) -> None:
        super().__init__(spec, dim, model, device, engine)
        self.preprocess = preprocess
        self._features = features  # torch only: (model, pixels) -> pooled features
        self.colour = colour  # appends a colour histogram of the same pixels (embedder.colour)
        # ONNX Runtime: threads per call -> a new session on the same model file
        self.session_factory: Callable[[int], Any] | None = None
        self._single_threaded: ImageBackbone | None = None

    @property
    def cache_namespace(self) -> str:
        base = super().cache_namespace
        return base if self.colour is None else f"{base}|{self.colour.cache_key}"

    def with_colour(self, colour: ColourHistogram) -> ImageBackbone:
        """This backbone with a colour histogram appended to its features (spec `+colour`)."""
        if self.colour is not None:
            return self
        out = ImageBackbone(self.spec + COLOUR_SUFFIX, self.dim + colour.dim, self.model,
                            self.device, self.preprocess, self._features, self.engine, colour)
        out.quantisation = self.quantisation
        out.tail_digest = self.tail_digest
        out.session_factory = self.session_factory
        return out

    def single_threaded(self) -> ImageBackbone:
        """This backbone on an ONNX Runtime session that runs each call on its calling thread
        alone, for callers that run several calls side by side (feature extraction): on a
        2-core CPU two such calls did ~210 int8 images/s where one call on both cores did ~165,
        which leaves a core idle between small operators (docs/performance.md). Itself where
        there is no such session (torch)."""
        if self.session_factory is None:
            return self
        if self._single_threaded is None:
            out = copy.copy(self)
            out.model = self.session_factory(1)
            out.session_factory = None
            self._single_threaded = out
        return self._single_threaded

    def forward_pixels(self, pixels: Any) -> np.ndarray:
        """(n, 3, H, W) preprocessed tensor or float32 array -> (n, dim) float32 features."""
        out = self._forward_model(pixels)
        if self.colour is None:
            return out
        mean, std = self.preprocess.normalisation
        if hasattr(pixels, "detach"):  # a torch tensor (DataLoader path), maybe on the GPU
            pixels = pixels.detach().float().cpu().numpy()
        hist = self.colour.from_pixels(pixels, mean, std)
        return np.hstack([out, hist])

    def _forward_model(self, pixels: Any) -> np.ndarray:
        if self.onnx:
            feed = np.ascontiguousarray(pixels, dtype=np.float32)
            return self.model.run(None, {"pixels": feed})[0]
        import torch

        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        with torch.inference_mode(), self._autocast():
            out = self._features(self.model, pixels.to(self.device))
        return out.float().cpu().numpy().astype(np.float32, copy=False)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> (n, 3, H, W) float32 model input, without running the model.

        The API runs this in each request's thread, so its batch worker only runs the model.
        """
        import torch

        if not images:
            raise ValueError("preprocess_batch needs at least one image, got 0")
        return torch.stack([self.preprocess(im) for im in images]).numpy()

    def encode_preprocessed(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, 3, H, W) arrays from `preprocess_batch` -> (n, dim) float32 features."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (n, 3, H, W), got shape {pixels.shape}")
        chunks = [
            self.forward_pixels(np.ascontiguousarray(pixels[i : i + batch_size]))
            for i in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode RGB PIL images (decode them with embedder.images.load_image)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = [
            self.encode_preprocessed(self.preprocess_batch(images[i : i + batch_size]), batch_size)
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)


class TextBackbone(Backbone):
    """Text encoder: transformers tokenizer + model, mean pooling over the attention mask."""

    kind = "text"

    def __init__(
        self,
        spec: str,
        dim: int,
        model: Any,
        device: str,
        tokenizer: Any,
        config: TextConfig,
        engine: str = "torch",
    ) -> None:
        super().__init__(spec, dim, model, device, engine)
        self.tokenizer = tokenizer
        self.config = config

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="np",
        )
        if self.onnx:  # the exported graph pools over the mask itself
            feeds = {name: batch[name].astype(np.int64, copy=False) for name in TEXT_INPUTS}
            return self.model.run(None, feeds)[0]
        import torch

        tensors = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        with torch.inference_mode(), self._autocast():
            pooled = mean_pooled(self.model, tensors)
        return pooled.float().cpu().numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode strings; batches are formed by length so padding stays small, order kept."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"TextBackbone.encode expects str items, got {sorted(set(bad))}")
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            out[idx] = self._encode_batch([texts[j] for j in idx])
        return out


def mean_pooled(model: Any, batch: Any) -> Any:
    """Mean of the last hidden states over the attention mask (sentence-transformers pooling)."""
    hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
