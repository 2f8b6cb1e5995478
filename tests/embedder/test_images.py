"""embedder.images: every odd-but-valid image becomes RGB; every bad one becomes an ImageError."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from embedder.errors import ImageError
from embedder.images import ImageLimits, load_image, read_image_bytes, sha256_bytes


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
