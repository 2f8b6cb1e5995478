"""Writes through a live `python -m api` are there after a restart (SIGTERM and SIGKILL)."""

from __future__ import annotations

import json
import signal

import httpx
import pytest


def _put(base: str, auth: dict, pid: str, photo: bytes, title: str) -> None:
    r = httpx.put(
        f"{base}/v1/products/{pid}",
        data={"title": title, "category": "Home > Lamps", "attributes": '{"colour": "teal"}'},
        files={"image": ("lamp.png", photo)},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text


def _found(base: str, pid: str, photo: bytes, title: str) -> bool:
    got = httpx.get(f"{base}/v1/products/{pid}", timeout=30)
    if got.status_code != 200:
        return False
    assert got.json()["attributes"] == {"colour": "teal"}
    assert httpx.get(f"{base}/v1/products/{pid}/image", timeout=30).content == photo
    hits = httpx.post(
        f"{base}/v1/search",
        data={"title": title, "k": "1"},
        files={"image": ("q.png", photo)},
        timeout=30,
    ).json()["hits"]
    return hits[0]["id"] == pid


@pytest.mark.slow
def test_writes_survive_sigterm_and_sigkill(
    model_dir, tmp_path, start_server, make_image, api_key, auth
):
    log = tmp_path / "server.log"
    photo_a, photo_b = make_image((0, 128, 128), (48, 48)), make_image((250, 200, 0), (48, 48))
    manifest = model_dir / "index" / "manifest.json"
    saves_before = json.loads(manifest.read_text())["save_seq"]
    proc, base = start_server(model_dir, log, "--api-key", api_key)
    try:
        _put(base, auth, "lamp-a", photo_a, "teal desk lamp")
        assert httpx.delete(f"{base}/v1/products/lamp-a", headers=auth).status_code == 200
        _put(base, auth, "lamp-a", photo_a, "teal desk lamp")
        proc.send_signal(signal.SIGTERM)  # graceful: the lifespan's shutdown snapshots the index
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert json.loads(manifest.read_text())["save_seq"] == saves_before + 1
        proc, base = start_server(model_dir, log, "--api-key", api_key)
        assert _found(base, "lamp-a", photo_a, "teal desk lamp")
        _put(base, auth, "lamp-b", photo_b, "yellow floor lamp")
        proc.kill()  # SIGKILL right after the response: the write must already be durable
        proc.wait(timeout=30)
        proc, base = start_server(model_dir, log, "--api-key", api_key)
        assert _found(base, "lamp-a", photo_a, "teal desk lamp")
        assert _found(base, "lamp-b", photo_b, "yellow floor lamp")
    finally:
        proc.kill()
        proc.wait(timeout=30)
