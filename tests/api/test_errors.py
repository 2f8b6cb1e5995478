"""Every bad input gets a 4xx JSON error with a reason, and the server keeps serving."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG")
    raw = buf.getvalue()
    ihdr_data = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = b"IHDR" + ihdr_data
    chunk = struct.pack(">I", len(ihdr_data)) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    start = raw.index(b"IHDR") - 4
    return raw[:start] + chunk + raw[start + 25 :]


def _assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "request_id"} and body["detail"]
    if code is not None:
        assert body["error"] == code
    return body


@pytest.mark.parametrize("route", ["/v1/classify", "/v1/search"])
def test_bad_images(reader, route, make_image):
    jpeg = make_image(fmt="JPEG", size=(64, 64))
    cases = [
        (jpeg[: len(jpeg) // 2], 422, "truncated"),
        (b"\xff\xd8\xff\xe0" + b"garbage" * 50, 422, None),
        (b"name,title\n1,shoe\n" * 20, 422, "not_an_image"),
        (png_bomb(), 413, "too_many_pixels"),
        (make_image(size=(4, 4)), 422, "too_small"),
    ]
    for data, status, code in cases:
        r = reader.post(route, files={"image": ("x.jpg", data, "image/jpeg")})
        _assert_error(r, status, code)
    assert reader.get("/healthz").status_code == 200


def test_upload_over_the_byte_limit(make_client):
    client = make_client(max_upload_bytes=4096)
    big = io.BytesIO()
    Image.effect_noise((128, 128), 64).convert("RGB").save(big, format="PNG")
    assert len(big.getvalue()) > 4096
    r = client.post("/v1/classify", files={"image": ("big.png", big.getvalue())})
    _assert_error(r, 413, "too_many_bytes")


def test_request_body_over_the_limit_is_refused_before_parsing(make_client):
    client = make_client(max_upload_bytes=4096)
    huge = b"x" * (2 * 1024 * 1024)
    r = client.post("/v1/classify", files={"image": ("huge.jpg", huge)})
    body = _assert_error(r, 413, "too_many_bytes")
    assert "request body" in body["detail"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(64):
            yield b"y" * 65536

    r = client.post(
        "/v1/classify",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=zzz"},
    )
    _assert_error(r, 413, "too_many_bytes")
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("route", ["/v1/classify", "/v1/search"])
def test_empty_request(reader, route):
    _assert_error(reader.post(route), 422, "empty_request")
    _assert_error(reader.post(route, data={"title": "   "}), 422, "empty_request")
    empty_file = {"image": ("", b"", "application/octet-stream")}
    _assert_error(reader.post(route, files=empty_file, data={"k": "3"}), 422)


@pytest.mark.parametrize("k", ["0", "-1", "10000", "abc"])
@pytest.mark.parametrize("route", ["/v1/classify", "/v1/search"])
def test_k_out_of_range(reader, route, k):
    body = _assert_error(reader.post(route, data={"title": "shoe", "k": k}), 422)
    assert "k" in body["detail"]


def test_unknown_method_and_huge_title(reader):
    body = _assert_error(reader.post("/v1/classify", data={"title": "x", "method": "knn"}), 422)
    assert "method" in body["detail"]
    body = _assert_error(reader.post("/v1/search", data={"title": "t" * 5000}), 422)
    assert "title has 5000 characters" in body["detail"]


def test_unknown_product_id(reader):
    _assert_error(reader.get("/v1/products/missing"), 404, "product_not_found")
    _assert_error(reader.get("/v1/products/missing/image"), 404, "product_not_found")
    r = reader.post("/v1/search", data={"product_id": "missing"})
    _assert_error(r, 404, "product_not_found")


def test_unknown_route_and_method_are_json(reader):
    _assert_error(reader.get("/v2/nothing"), 404, "not_found")
    _assert_error(reader.get("/v1/classify"), 405, "method_not_allowed")
