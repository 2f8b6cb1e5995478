"""Regression tests for #13: hostile input and races get a 4xx or a clean answer, never a 500,
a crash, unbounded growth or a connection held forever."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from api.media import ImageStore
from api.settings import Settings

PRODUCT = {"title": "red canvas shoe", "category": "Footwear > Shoes"}


def put(client, pid: str, auth: dict, image: bytes | None = None, **fields):
    files = {"image": ("x.png", image, "image/png")} if image is not None else None
    return client.put(f"/v1/products/{pid}", data={**PRODUCT, **fields}, files=files, headers=auth)


def sixteen_bit_png(width: int, height: int) -> bytes:
    values = np.zeros((height, width), dtype=np.uint16)
    values[::7, ::3] = 60000
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    return buf.getvalue()


# ---- 1: a high-bit-depth image under the pixel limit decodes within the working budget ------


def test_sixteen_bit_image_near_the_pixel_limit_is_served(make_client):
    client = make_client(max_pixels=4_000_000, max_decode_bytes=8 * 1024 * 1024)
    r = client.post("/v1/classify", files={"image": ("g.png", sixteen_bit_png(2000, 1990))})
    assert r.status_code == 200, r.text


# ---- 2: image GETs racing PUT/DELETE of the same id -----------------------------------------


def test_image_being_read_outlives_its_deletion(tmp_path):
    store = ImageStore(tmp_path / "uploads", tmp_path)
    recorded = store.save(_png_bytes((1, 2, 3)), Image.new("RGB", (16, 16)))
    path = store.resolve(recorded)
    response = store.open(recorded)
    assert store.discard(recorded) is False and path.exists()  # deferred: a reader holds it
    body = response.file.read()
    response.close()
    assert body == _png_bytes((1, 2, 3)) and not path.exists()  # gone after the last reader


def test_storing_the_same_image_again_calls_off_a_deferred_deletion(tmp_path):
    store = ImageStore(tmp_path / "uploads", tmp_path)
    data = _png_bytes((9, 9, 9))
    recorded = store.save(data, Image.new("RGB", (16, 16)))
    response = store.open(recorded)
    store.discard(recorded)
    assert store.save(data, Image.new("RGB", (16, 16))) == recorded  # a new product uses it
    response.close()
    assert store.resolve(recorded) is not None


def test_image_reads_racing_replacing_writes_never_fail(model_dir, serve_settings, auth):
    """1 writer replaces (and deletes/recreates) one product's image while 3 readers GET it."""
    base = serve_settings(Settings(model_dir=model_dir, api_key=auth["Authorization"][7:]))
    with httpx.Client(base_url=base, timeout=30) as c:
        assert put(c, "race", auth, _png_bytes((0, 0, 0))).status_code == 200
    stop = threading.Event()
    statuses: list[int] = []
    truncated: list[int] = []

    def writer() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            for i in range(40):
                if i % 10 == 9:
                    assert c.delete("/v1/products/race", headers=auth).status_code == 200
                assert put(c, "race", auth, _png_bytes((i, 255 - i, 7))).status_code == 200
        stop.set()

    def reader() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while not stop.is_set():
                r = c.get("/v1/products/race/image")
                statuses.append(r.status_code)
                if r.status_code == 200 and len(r.content) != int(r.headers["content-length"]):
                    truncated.append(len(r.content))
                if r.status_code == 404:
                    assert r.json()["error"] == "product_not_found"  # only in a delete's gap

    threads = [threading.Thread(target=writer), *(threading.Thread(target=reader) for _ in "abc")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses and 500 not in statuses and not truncated
    assert statuses.count(200) > 0


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


# ---- 3: metrics labels come from a fixed set ------------------------------------------------


def test_made_up_methods_do_not_grow_metrics(client):
    for i in range(50):
        client.request(f"MADEUP{i}", "/healthz")
    text = client.get("/metrics").text
    assert "MADEUP" not in text
    assert 'method="other"' in text


# ---- 4: deeply nested JSON is a 422 -----------------------------------------------------------


def test_deeply_nested_attributes_are_refused(client, auth):
    deep = "[" * 1000 + "]" * 1000
    assert put(client, "deep", auth, attributes='{"a": [[1]]}').status_code == 200
    r = put(client, "deep", auth, attributes='{"a": ' + deep + "}")
    assert r.status_code == 422 and "nested" in r.json()["detail"]


def test_deeply_nested_json_body_is_refused_before_parsing(client):
    r = client.post(
        "/v1/search", content=b"[" * 100_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "nested" in r.json()["detail"]


# ---- 5: a request that never finishes arriving is cut off; connections are capped ------------


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_half_sent_header_is_closed_after_the_read_timeout(model_dir, serve_settings, parser):
    base = serve_settings(
        Settings(model_dir=model_dir, request_read_timeout_s=0.5, http_parser=parser)
    )
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert sock.recv(1024) == b""  # closed by the server, not by our 20 s timeout


def test_connections_over_the_cap_get_503(model_dir, serve_settings):
    base = serve_settings(Settings(model_dir=model_dir, max_connections=2))
    url = urlsplit(base)
    idle = [socket.create_connection((url.hostname, url.port)) for _ in range(2)]
    try:
        assert httpx.get(f"{base}/healthz").status_code == 503
    finally:
        for sock in idle:
            sock.close()


# ---- 6: ids "." and ".." (and others that are not one path segment) are refused --------------


@pytest.mark.parametrize("pid", ["%2E", "%2E%2E", "a%5Cb", "%20"])
def test_ids_outside_the_grammar_are_refused(client, auth, pid):
    r = put(client, pid, auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"


def test_dotted_ids_inside_the_grammar_work(client, auth):
    r = put(client, "a.b..c", auth)
    assert r.status_code == 200
    assert client.get("/v1/products/a.b..c").json()["id"] == "a.b..c"


# ---- 7: a bundle whose dimension differs from the index's is refused at startup -------------


def test_index_of_another_dimension_is_refused_at_startup(model_dir):
    from api.metrics import ApiMetrics
    from api.services import Services
    from embedder.bundle import Bundle
    from index.errors import IndexMismatchError
    from index.store import ProductIndex

    fingerprint = Bundle.load(model_dir / "bundle").fingerprint
    shutil.rmtree(model_dir / "index")
    ProductIndex.create(model_dir / "index", d=7, bundle_fingerprint=fingerprint).close()
    with pytest.raises(IndexMismatchError, match="7-d vectors"):
        Services.open(Settings(model_dir=model_dir), ApiMetrics())


# ---- 8: an internal error is a logged 500 with a request id ---------------------------------


def test_internal_error_is_a_500_with_a_request_id(model_dir, caplog, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app

    def broken(*args, **kwargs):
        raise ValueError("a bug inside the service")

    app = create_app(Settings(model_dir=model_dir))
    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(client.app.state.services.index, "search", broken)
        with caplog.at_level(logging.ERROR, logger="api.errors"):
            r = client.post(
                "/v1/search", data={"title": "red shoe"}, headers={"X-Request-ID": "abc-1"}
            )
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal" and body["request_id"] == "abc-1"
    assert r.headers["X-Request-ID"] == "abc-1"
    assert "a bug inside the service" not in body["detail"]
    assert any("abc-1" in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_request_ids_are_echoed_or_generated(reader):
    assert (
        reader.get("/healthz", headers={"X-Request-ID": "req.42_x"}).headers["X-Request-ID"]
        == "req.42_x"
    )
    r = reader.get("/v1/products/nope", headers={"X-Request-ID": "bad id\twith spaces"})
    generated = r.headers["X-Request-ID"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    assert r.json()["request_id"] == generated


# ---- 9: the OpenAPI schema tells the truth (the schemathesis test covers the rest) -----------


def test_errors_are_documented_with_their_real_body(reader):
    spec = reader.get("/openapi.json").json()
    put_op = spec["paths"]["/v1/products/{product_id}"]["put"]
    assert {"401", "403", "413", "422", "500"} <= set(put_op["responses"])
    ref = put_op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ErrorPublic")
    assert "HTTPValidationError" not in json.dumps(spec)


@pytest.mark.parametrize("method", ["OPTIONS", "PATCH"])
def test_method_not_allowed_lists_every_allowed_method(reader, method):
    r = reader.request(method, "/v1/products/x")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"DELETE", "GET", "PUT"}
    assert reader.request(method, "/healthz").headers["allow"] == "GET"
    assert r.json()["error"] == "method_not_allowed"


# ---- 10: attribute values are stored as JSON, NaN refused -----------------------------------


def test_nested_attribute_values_are_json_text(client, auth):
    r = put(client, "attrs", auth, attributes='{"b": [1, 2], "c": {"d": null}, "e": "x"}')
    assert r.status_code == 200, r.text
    attributes = client.get("/v1/products/attrs").json()["attributes"]
    assert attributes == {"b": "[1, 2]", "c": '{"d": null}', "e": "x"}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_refused(client, auth, value):
    r = put(client, "nan", auth, attributes='{"w": ' + value + "}")
    assert r.status_code == 422 and value.lstrip("-") in r.json()["detail"]


# ---- 11: catalog images live in the model dir, recorded relative to it ----------------------


def test_model_dir_moved_elsewhere_still_serves_catalog_images(trained_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from index.store import ProductIndex

    moved = Path(shutil.copytree(trained_model_dir, tmp_path / "elsewhere" / "model"))
    with ProductIndex.open(moved / "index") as index:
        pid = index.search(np.eye(1, index.d, dtype=np.float32), 1)[0][0].id
        recorded = index.get(pid).image
    assert recorded and not Path(recorded).is_absolute()
    assert (moved / recorded).is_file()
    with TestClient(create_app(Settings(model_dir=moved))) as client:
        r = client.get(f"/v1/products/{pid}/image")
    assert r.status_code == 200 and r.content == (moved / recorded).read_bytes()
