"""API fixtures: one small trained model per session (tiny hf backbones, sample catalog),
copied per test that writes, an in-process client, and live `python -m api` servers."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.settings import Settings

API_KEY = "test-key-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def trained_model_dir(pipeline_run) -> Path:
    """`python -m train.huse` output (bundle/ + index/): the session's shared pipeline run."""
    return Path(pipeline_run[1])


@pytest.fixture
def model_dir(trained_model_dir, tmp_path) -> Path:
    """A private copy of the trained model, so writes in one test never leak into another."""
    return Path(shutil.copytree(trained_model_dir, tmp_path / "model"))


@pytest.fixture
def make_client(model_dir) -> Iterator[Callable[..., TestClient]]:
    """Factory for clients over `model_dir` with settings overrides; lifespans run and close."""
    clients: list[TestClient] = []

    def factory(**overrides) -> TestClient:
        settings = Settings(**{"model_dir": model_dir, "api_key": API_KEY, **overrides})
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    """A client over a private model copy: for tests that write or count metrics."""
    return make_client()


@pytest.fixture(scope="session")
def reader(trained_model_dir, tmp_path_factory) -> Iterator[TestClient]:
    """One client for the whole session, for tests that only read (no writes, no counts)."""
    copy = shutil.copytree(trained_model_dir, tmp_path_factory.mktemp("reader") / "model")
    with TestClient(create_app(Settings(model_dir=copy, api_key=API_KEY))) as client:
        yield client


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    return image_bytes


def image_bytes(color=(200, 40, 40), size=(64, 64), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def catalog_products(sample_catalog) -> list:
    """The sample catalog's valid products (id, title, image_path, category, ...)."""
    from embedder.catalog import read_catalog

    return read_catalog(sample_catalog).products


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} not healthy after {timeout} s")


def _start_server(model_dir: Path, log_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m api --model D --port P ...` in a subprocess, returned once /healthz answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "api", "--model", str(model_dir), "--port", str(port), *args]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, proc)
    except Exception:
        proc.kill()
        proc.wait(timeout=10)
        raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}") from None
    return proc, base_url


@pytest.fixture
def start_server() -> Callable[..., tuple[subprocess.Popen, str]]:
    """`start(model_dir, log_path, *args)` -> (process, base URL) of a live `python -m api`."""
    return _start_server


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """uvicorn serving the app on 127.0.0.1:<free port> in a thread of this process, with the
    read timeout and connection cap of `settings` (api.server)."""
    from api.server import uvicorn_config

    config = uvicorn_config(
        create_app(settings), settings, host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    try:
        wait_healthy(base)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def serve_settings() -> Iterator[Callable[[Settings], str]]:
    """`serve(settings)` -> base URL of a live server for `settings`, stopped after the test."""
    with ExitStack() as stack:
        yield lambda settings: stack.enter_context(serving(settings))


@pytest.fixture
def live_url(model_dir) -> Iterator[str]:
    """A live server over a private model copy, with no write key."""
    with serving(Settings(model_dir=model_dir)) as base:
        yield base


@pytest.fixture
def live_keyed_url(model_dir) -> Iterator[str]:
    """A live server over a private model copy that takes writes with `API_KEY`."""
    with serving(Settings(model_dir=model_dir, api_key=API_KEY)) as base:
        yield base


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Headless Debian chromium through Playwright (the test skips where it is absent)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
