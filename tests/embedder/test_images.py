"""embedder.images: every odd-but-valid image becomes RGB; every bad one becomes an ImageError."""

from __future__ import annotations

import hashlib
import io
import math
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from embedder.errors import ImageError
from embedder.images import (
    DEFAULT_LIMITS,
    ImageLimits,
    MemoryBudget,
    load_image,
    plan_decode,
    read_image_bytes,
    sha256_bytes,
)


def encode(img: Image.Image, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a one-byte IDAT (a pixel bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00") + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)), "JPEG")


def test_rgb_jpeg_round_trip(jpeg_bytes: bytes) -> None:
    img = load_image(jpeg_bytes)
    assert img.mode == "RGB" and img.size == (64, 48)


def test_path_and_bytes_give_the_same_pixels(tmp_path, jpeg_bytes: bytes) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(jpeg_bytes)))
    assert read_image_bytes(str(path)) == jpeg_bytes


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG")
    img = load_image(data)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60  # pure magenta + yellow ink is red


def test_rgba_png_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half fully transparent
    img = load_image(encode(rgba, "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((4, 4)) == (255, 255, 255)
    assert img.getpixel((28, 4)) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["P", "LA", "L", "1"])
def test_palette_grey_and_bilevel_modes_become_rgb(mode: str) -> None:
    base = Image.new("RGB", (32, 32), (200, 30, 30)).convert(mode)
    img = load_image(encode(base, "PNG"))
    assert img.mode == "RGB" and img.size == (32, 32)


def test_palette_with_transparency_uses_white_background() -> None:
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0, 0, 0] * 254)
    data = encode(pal, "PNG", transparency=1)
    assert load_image(data).getpixel((3, 3)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_to_eight_bits() -> None:
    values = np.zeros((32, 32), dtype=np.uint16)
    values[:, 16:] = 65535
    values[:, 8:16] = 32896  # 128 * 257
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = load_image(data)
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((10, 0)) == (128, 128, 128)
    assert img.getpixel((20, 0)) == (255, 255, 255)


def test_float_tiff_is_scaled() -> None:
    values = np.full((20, 20), 1000.0, dtype=np.float32)
    values[0, 0] = 0.0
    img = load_image(encode(Image.fromarray(values), "TIFF"))
    assert img.mode == "RGB" and img.getpixel((5, 5))[0] > 0


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (60, 20), (0, 0, 0))
    wide.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    img = load_image(encode(wide, "JPEG", exif=exif.tobytes()))
    assert img.size == (20, 60)
    assert img.getpixel((10, 2))[0] > 200  # the left strip is now at the top


def test_truncated_jpeg_is_rejected(jpeg_bytes: bytes) -> None:
    with pytest.raises(ImageError) as err:
        load_image(jpeg_bytes[: len(jpeg_bytes) // 2])
    assert err.value.reason == "truncated"


@pytest.mark.parametrize(
    "data", [b"", b"hello, I am a text file", b"P6\n32 32\n255\n" + b"\x00" * 3072]
)
def test_non_images_and_refused_formats(data: bytes) -> None:
    with pytest.raises(ImageError) as err:
        load_image(data)
    assert err.value.reason == "not_an_image"


def test_pixel_bomb_refused_from_header_without_decoding() -> None:
    with pytest.raises(ImageError) as err:
        load_image(png_header_only(30_000, 30_000))
    assert err.value.reason == "too_many_pixels"


def test_pixel_limit_is_configurable(jpeg_bytes: bytes) -> None:
    with pytest.raises(ImageError) as err:
        load_image(jpeg_bytes, ImageLimits(max_pixels=64 * 48 - 1))
    assert err.value.reason == "too_many_pixels"


def test_tiny_image_rejected() -> None:
    with pytest.raises(ImageError) as err:
        load_image(encode(Image.new("RGB", (40, 8)), "PNG"))
    assert err.value.reason == "too_small"


def test_byte_limit_applies_to_bytes_and_files(tmp_path, jpeg_bytes: bytes) -> None:
    limits = ImageLimits(max_bytes=len(jpeg_bytes) - 1)
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes)
    for source in (jpeg_bytes, path):
        with pytest.raises(ImageError) as err:
            load_image(source, limits)
        assert err.value.reason == "too_many_bytes"


def test_missing_file_and_directory(tmp_path) -> None:
    for path in (tmp_path / "nope.jpg", tmp_path):
        with pytest.raises(ImageError) as err:
            load_image(path)
        assert err.value.reason == "missing_file"


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="int"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_side=0"):
        ImageLimits(min_side=0)


def test_random_corruption_never_escapes_as_another_exception(jpeg_bytes: bytes) -> None:
    """Hostile bytes: flipped bytes and cuts give RGB or ImageError, nothing else."""
    png = encode(Image.new("RGBA", (40, 40), (1, 2, 3, 100)), "PNG")
    rng = random.Random(0)
    outcomes = set()
    for base in (jpeg_bytes, png):
        for _ in range(60):
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = data[: rng.randint(len(data) // 2, len(data))]
            try:
                outcomes.add(load_image(bytes(data)).mode)
            except ImageError as e:
                outcomes.add(e.reason)
    assert outcomes <= {"RGB", "truncated", "not_an_image", "too_small", "too_many_pixels"}
    assert "truncated" in outcomes


def test_sha256_bytes_is_plain_sha256(jpeg_bytes: bytes) -> None:
    assert sha256_bytes(jpeg_bytes) == hashlib.sha256(jpeg_bytes).hexdigest()


# ---- #13: working memory is planned from the header and bounded ------------------------------

_PEAK_RSS_SCRIPT = """
import io, resource, sys
import numpy as np
from PIL import Image
from embedder.images import load_image
values = np.zeros((6600, 6000), dtype=np.uint16 if sys.argv[1] == "png" else np.float32)
values[::7, ::3] = 60000
buf = io.BytesIO()
if sys.argv[1] == "png":
    Image.fromarray(values).save(buf, format="PNG")
else:
    Image.fromarray(values).save(buf, format="TIFF", compression="tiff_adobe_deflate")
data = buf.getvalue()
del values, buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_image(data)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_high_bit_depth_image_under_the_pixel_limit_stays_in_its_budget(kind: str) -> None:
    """A 39.6 MP 16-bit PNG / float TIFF (well under 1 MB on disk) took ~1 GB to decode as full
    size float64 arrays; now the peak growth stays under the default working budget."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, kind], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.split()[-1]) <= DEFAULT_LIMITS.max_work_bytes


def test_plans_never_exceed_the_working_budget() -> None:
    limits = ImageLimits(max_work_bytes=4 * 1024 * 1024)
    for mode, size in [("I;16", (1200, 1000)), ("F", (800, 800)), ("RGBA", (800, 600))]:
        img = Image.new(mode, size)
        buf = io.BytesIO()
        img.save(buf, format="TIFF" if mode == "F" else "PNG")
        plan = plan_decode(Image.open(io.BytesIO(buf.getvalue())), limits)
        assert plan.reduce > 1 and plan.work_bytes <= limits.max_work_bytes
        out = load_image(buf.getvalue(), ImageLimits(max_work_bytes=limits.max_work_bytes))
        assert out.mode == "RGB" and out.size[0] <= math.ceil(size[0] / plan.reduce)


def test_big_jpeg_is_decoded_at_a_reduced_dct_scale() -> None:
    data = encode(Image.new("RGB", (2048, 2048), (10, 200, 30)), "JPEG")
    limits = ImageLimits(max_work_bytes=4 * 1024 * 1024)
    plan = plan_decode(Image.open(io.BytesIO(data)), limits)
    assert plan.draft_size is not None and plan.draft_size[0] < 2048
    img = load_image(data, limits)
    assert img.size[0] <= plan.draft_size[0] and img.getpixel((5, 5))[1] > 150


def test_decoded_buffer_over_the_budget_is_refused_unless_a_draft_fits() -> None:
    data = encode(Image.new("RGB", (1024, 1024)), "PNG")
    with pytest.raises(ImageError) as e:
        load_image(data, ImageLimits(max_work_bytes=1024 * 1024))
    assert e.value.reason == "too_many_pixels" and "working-memory" in str(e.value)


def test_memory_budget_makes_concurrent_decodes_wait() -> None:
    import threading

    budget = MemoryBudget(100)
    entered = threading.Event()
    with budget.reserve(80):
        def second() -> None:
            with budget.reserve(50):
                entered.set()

        t = threading.Thread(target=second)
        t.start()
        assert not entered.wait(0.2) and budget.held == 80
    t.join(timeout=5)
    assert entered.is_set() and budget.held == 0


def test_non_finite_floats_do_not_break_scaling() -> None:
    values = np.full((20, 20), 500.0, dtype=np.float32)
    values[0, :5] = [np.nan, np.inf, -np.inf, 0.0, 1000.0]
    img = load_image(encode(Image.fromarray(values), "TIFF"))
    assert img.mode == "RGB" and img.getpixel((5, 5))[0] > 0
