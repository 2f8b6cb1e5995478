"""Safe image decoding: hostile or broken bytes in, an 8-bit RGB PIL image or an ImageError out.

Used by the catalog reader, the feature extractor and the API's uploads, so every check that can
be made before decoding (byte size, header dimensions, working memory) is made before decoding.

Memory is planned from the header before any full-size buffer exists: the decoded buffer
(Pillow's bytes per pixel for the file's own mode) plus what turning it into RGB costs. A plan
over `ImageLimits.max_work_bytes` is shrunk - a JPEG is decoded at a reduced DCT scale (draft
mode), any other image is reduced in its own mode before it is converted - and refused only when
even the decoded buffer does not fit. High-bit-depth images (16-bit, 32-bit int, float) are
scaled to 8 bits a strip of rows at a time, never as a full-size float array. A `MemoryBudget`
shared by a process bounds what concurrent decodes hold together.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from embedder.errors import ImageError

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Formats a product photo can plausibly come in; anything else is refused before a plugin runs.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_HIGH_DEPTH_MODES = (*_SIXTEEN_BIT_MODES, "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255)
# Bytes Pillow stores per pixel for a mode (every mode not listed here uses 4).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, **{m: 2 for m in _SIXTEEN_BIT_MODES}}
_RGB_BYTES = 4
# Extra bytes per pixel that turning a mode into RGB allocates at its working size: an alpha image
# goes through RGBA, an RGB copy and the white background; a high-bit-depth one through 8-bit grey.
_ALPHA_WORK_BYTES = 3 * _RGB_BYTES
_HIGH_DEPTH_WORK_BYTES = 1 + _RGB_BYTES
# Pixels per strip when scaling high-bit-depth rows to 8 bits (float64 temporaries of ~8 MB).
_STRIP_PIXELS = 1 << 20
# DCT scales a JPEG can be decoded at (Pillow's draft mode).
_JPEG_SCALES = (2, 4, 8)
# EXIF orientation tag and the transpose that shows each value upright.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must satisfy; checked from the file size and header before decoding.

    `max_work_bytes` is the most memory one decode may plan for (decoded buffer + conversion to
    RGB): the largest 8-bit RGB image under `max_pixels` fits in it whole; bigger plans are
    decoded reduced (see the module docstring).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 16
    max_work_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_work_bytes) <= 0 or self.min_side < 1:
            raise ValueError(
                f"ImageLimits must be positive, got max_bytes={self.max_bytes}, "
                f"max_pixels={self.max_pixels}, min_side={self.min_side}, "
                f"max_work_bytes={self.max_work_bytes}"
            )


DEFAULT_LIMITS = ImageLimits()


class MemoryBudget:
    """Bytes that concurrent decodes in one process may hold together.

    A decode reserves its planned working memory before it allocates and waits while others
    hold the rest, so N concurrent hostile uploads cost at most `total_bytes`, not N times a plan.
    """

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError(f"total_bytes must be positive, got {total_bytes}")
        self.total_bytes = total_bytes
        self._held = 0
        self._cond = threading.Condition()

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` of the budget for the duration of the block (waits for room)."""
        nbytes = min(nbytes, self.total_bytes)  # a plan is already capped by max_work_bytes
        with self._cond:
            self._cond.wait_for(lambda: self._held + nbytes <= self.total_bytes)
            self._held += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._held -= nbytes
                self._cond.notify_all()


@dataclass(frozen=True)
class DecodePlan:
    """How one image will be decoded: JPEG draft size, reduction factor, bytes it works in."""

    draft_size: tuple[int, int] | None
    reduce: int
    work_bytes: int


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


def load_image(
    source: bytes | Path | str,
    limits: ImageLimits = DEFAULT_LIMITS,
    budget: MemoryBudget | None = None,
) -> Image.Image:
    """Decode `source` (raw bytes or a file path) to an upright 8-bit RGB image.

    Images whose full-size conversion would exceed `limits.max_work_bytes` come back reduced
    (still far larger than any backbone input). With `budget`, the decode waits until its
    planned memory fits beside the other decodes holding the budget.

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
    img = _open(data, limits)
    plan = plan_decode(img, limits)
    with budget.reserve(plan.work_bytes) if budget is not None else nullcontext():
        return to_rgb(_load(img, plan), plan.reduce)


def _guarded(action: Callable[[], T]) -> T:
    """Run a Pillow call, turning every way a hostile file can make it fail into ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return action()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_many_pixels", str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageError("not_an_image", "unrecognised image format") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # Pillow signals truncated streams and corrupt chunks with these; none may escape.
        raise ImageError("truncated", f"{type(e).__name__}: {e}") from e


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open lazily (header only) and check the declared dimensions."""
    if not data:
        raise ImageError("not_an_image", "empty file")

    def open_checked() -> Image.Image:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        width, height = img.size
        if width * height > limits.max_pixels:
            raise ImageError(
                "too_many_pixels", f"{width}x{height} > limit {limits.max_pixels} pixels"
            )
        if min(width, height) < limits.min_side:
            raise ImageError("too_small", f"{width}x{height} < min side {limits.min_side}")
        return img

    return _guarded(open_checked)


def _load(img: Image.Image, plan: DecodePlan) -> Image.Image:
    """Fully decode (so truncation shows up here), at the planned JPEG draft size."""

    def load() -> Image.Image:
        if plan.draft_size is not None:
            img.draft(img.mode, plan.draft_size)
        img.load()
        return img

    return _guarded(load)


def stored_bytes(size: tuple[int, int], mode: str) -> int:
    """Bytes Pillow allocates for an image of `size` in `mode`."""
    return size[0] * size[1] * _STORED_BYTES.get(mode, _RGB_BYTES)


def _conversion_bytes(size: tuple[int, int], mode: str, turned: bool) -> int:
    """Bytes turning an image of `size` in `mode` into upright RGB allocates beside it."""
    turn = _RGB_BYTES if turned else 0  # an EXIF turn copies the RGB result once
    if mode == "RGB":
        per_pixel = turn
    elif mode in _HIGH_DEPTH_MODES:
        per_pixel = _HIGH_DEPTH_WORK_BYTES + turn
    elif mode in _ALPHA_MODES or mode == "P":
        per_pixel = _ALPHA_WORK_BYTES + turn
    else:
        per_pixel = _RGB_BYTES + turn
    return size[0] * size[1] * per_pixel


def _reduced(size: tuple[int, int], factor: int) -> tuple[int, int]:
    return math.ceil(size[0] / factor), math.ceil(size[1] / factor)


def plan_decode(img: Image.Image, limits: ImageLimits = DEFAULT_LIMITS) -> DecodePlan:
    """Plan a decode within `limits.max_work_bytes` from the header alone.

    A JPEG whose decoded buffer is too big is decoded at the largest DCT scale that fits; the
    conversion then works on the decoded image reduced by the smallest integer factor that fits.
    ImageError(too_many_pixels) when even the decoded buffer cannot fit.
    """
    budget = limits.max_work_bytes
    size, mode, draft_size = img.size, img.mode, None
    if stored_bytes(size, mode) > budget and img.format == "JPEG":
        for scale in _JPEG_SCALES:
            candidate = _reduced(size, scale)
            if stored_bytes(candidate, mode) < budget:
                size = draft_size = candidate
                break
    decoded = stored_bytes(size, mode)
    if decoded >= budget:
        raise ImageError(
            "too_many_pixels",
            f"{img.size[0]}x{img.size[1]} {mode} needs {decoded >> 20} MiB decoded, over the "
            f"{budget >> 20} MiB working-memory limit",
        )
    turned = _orientation(img) in _UPRIGHT

    def work(factor: int) -> int:
        reduced = _reduced(size, factor)
        copy = stored_bytes(reduced, mode) if factor > 1 else 0  # the reduced image itself
        return decoded + copy + _conversion_bytes(reduced, mode, turned)

    factor = 1
    while work(factor) > budget and _reduced(size, factor) != (1, 1):
        factor += 1
    if work(factor) > budget:
        raise ImageError("too_many_pixels", f"{size} {mode} cannot be converted within {budget} B")
    return DecodePlan(draft_size=draft_size, reduce=factor, work_bytes=work(factor))


def to_rgb(img: Image.Image, reduce: int = 1) -> Image.Image:
    """Map every mode (CMYK, P, alpha, 16-bit, float) to upright 8-bit RGB.

    `reduce` > 1 shrinks the image by that factor in its own mode (box average) before any
    conversion buffer is allocated; EXIF orientation is applied last, to the RGB result.
    """
    orientation = _orientation(img)
    if reduce > 1:
        img = _reduce(img, reduce)
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        rgb = _high_depth_to_grey(img).convert("RGB")
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, _WHITE)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    elif mode == "RGB":
        rgb = img
    else:
        try:
            rgb = img.convert("RGB")
        except ValueError as e:
            raise ImageError("unsupported_mode", f"cannot convert mode {mode} to RGB") from e
    method = _UPRIGHT.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception as e:  # a malformed EXIF block must not reject an otherwise good image
        logger.debug("ignoring unreadable EXIF orientation: %s", e)
        return 1


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """Shrink by `factor` in the image's own mode: box average where Pillow can, else nearest."""
    try:
        return img.reduce(factor)
    except ValueError:  # modes reduce() does not take (1, P, I;16): pick pixels instead
        return img.resize(_reduced(img.size, factor), Image.Resampling.NEAREST)


def _strips(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float64 rows) of `img`, a bounded number of pixels at a time."""
    width, height = img.size
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        box = (0, top, width, min(top + rows, height))
        yield top, np.asarray(img.crop(box), dtype=np.float64)


def _high_depth_to_grey(img: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit grey values to 0..255 (16-bit range unless values exceed it).

    Two passes over strips of rows (extremes, then scaling), so the only full-size buffer
    besides the decoded image is the 8-bit result. Non-finite floats count as 0.
    """
    low, high = 0.0, -math.inf
    for _, strip in _strips(img):
        finite = strip[np.isfinite(strip)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    high = max(high, 0.0)
    if high <= 255 and img.mode not in _SIXTEEN_BIT_MODES:
        scale_top = 255.0
    elif high <= 65535:
        scale_top = 65535.0
    else:
        scale_top = high
    scale = 255.0 / max(scale_top - low, 1e-12)
    grey = np.empty((img.size[1], img.size[0]), dtype=np.uint8)
    for top, strip in _strips(img):
        values = np.nan_to_num(strip, nan=0.0, posinf=high, neginf=low)
        np.clip((values - low) * scale + 0.5, 0, 255, out=values)
        grey[top : top + strip.shape[0]] = values.astype(np.uint8)
    return Image.fromarray(grey)
