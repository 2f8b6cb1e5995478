"""Safe image decoding: hostile or broken bytes in, an 8-bit RGB PIL image or an ImageError out.

Used by the catalog reader, the feature extractor and the API's uploads, so every check that can
be made before decoding (byte size, header dimensions) is made before decoding.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedder.errors import ImageError

logger = logging.getLogger(__name__)

# Formats a product photo can plausibly come in; anything else is refused before a plugin runs.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must satisfy; checked from the file size and header before decoding."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 16

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0 or self.min_side < 1:
            raise ValueError(
                f"ImageLimits must be positive, got max_bytes={self.max_bytes}, "
                f"max_pixels={self.max_pixels}, min_side={self.min_side}"
            )


DEFAULT_LIMITS = ImageLimits()


def sha256_bytes(data: bytes) -> str:
    """Content hash used as the identity of an image (duplicates, feature cache keys)."""
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(path: Path | str, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """Read a file's bytes, refusing missing files and files over `limits.max_bytes` unread."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageError("missing_file", f"{path}: {e.strerror or e}") from e
    if not path.is_file():
        raise ImageError("missing_file", f"{path} is not a regular file")
    if size > limits.max_bytes:
        raise ImageError("too_many_bytes", f"{size} bytes > limit {limits.max_bytes}")
    return path.read_bytes()


def load_image(source: bytes | Path | str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode `source` (raw bytes or a file path) to an upright 8-bit RGB image.

    Raises ImageError with reason missing_file, too_many_bytes, not_an_image, truncated,
    too_many_pixels, too_small or unsupported_mode.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > limits.max_bytes:
            raise ImageError("too_many_bytes", f"{len(data)} bytes > limit {limits.max_bytes}")
    elif isinstance(source, (str, Path)):
        data = read_image_bytes(source, limits)
    else:
        raise TypeError(f"load_image expects bytes or a path, got {type(source).__name__}")
    return to_rgb(_decode(data, limits))


def _decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open, check the header's dimensions, then fully decode (so truncation shows up here)."""
    if not data:
        raise ImageError("not_an_image", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageError(
                    "too_many_pixels", f"{width}x{height} > limit {limits.max_pixels} pixels"
                )
            if min(width, height) < limits.min_side:
                raise ImageError("too_small", f"{width}x{height} < min side {limits.min_side}")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_many_pixels", str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageError("not_an_image", "unrecognised image format") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # Pillow signals truncated streams and corrupt chunks with these; none may escape.
        raise ImageError("truncated", f"{type(e).__name__}: {e}") from e
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and map every mode (CMYK, P, alpha, 16-bit, float) to 8-bit RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a malformed EXIF block must not reject an otherwise good image
        logger.debug("ignoring unreadable EXIF orientation: %s", e)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_depth_to_rgb(img)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError("unsupported_mode", f"cannot convert mode {mode} to RGB") from e


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit grey values to 0..255 (16-bit range unless values exceed it)."""
    values = np.asarray(img, dtype=np.float64)
    low, high = min(float(values.min()), 0.0), float(values.max())
    if high <= 255 and img.mode not in _SIXTEEN_BIT_MODES:
        scale_top = 255.0
    elif high <= 65535:
        scale_top = 65535.0
    else:
        scale_top = high
    grey = np.clip((values - low) / max(scale_top - low, 1e-12) * 255.0 + 0.5, 0, 255)
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
