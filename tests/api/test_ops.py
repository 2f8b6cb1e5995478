"""GET /healthz, GET /metrics, the OpenAPI docs and the web page's static files."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from embedder.bundle import Bundle


def test_healthz_reports_model_index_and_versions(client, model_dir, catalog_products):
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["model"]["fingerprint"] == Bundle.load(model_dir / "bundle").fingerprint
    assert body["model"]["image_backbone"].startswith("hf:")
    assert body["index"]["size"] == len(catalog_products)
    manifest = json.loads((model_dir / "index" / "manifest.json").read_text())
    assert body["index"]["factory"] == manifest["factory"]
    assert body["index"]["prefix_dims"] == Bundle.load(model_dir / "bundle").served_prefix_dims
    assert body["index"]["prefix_dims"] == manifest.get("prefix", {}).get("dims")
    assert {"python", "fastapi", "numpy"} <= set(body["versions"])
    assert body["batching"]["enabled"] is True


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list, name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return sum(found)


def test_metrics_count_requests_per_route_and_time_stages(client):
    client.post("/v1/classify", data={"title": "a red shoe"})
    client.post("/v1/classify", data={"k": "0", "title": "x"})
    client.get("/v1/products/nope")
    samples = _samples(client.get("/metrics").text)
    requests = "huse_http_requests_total"
    assert _value(samples, requests, route="/v1/classify", method="POST", status="200") == 1
    assert _value(samples, requests, route="/v1/classify", status="422") == 1
    assert _value(samples, requests, route="/v1/products/{product_id}", status="404") == 1
    latency = "huse_http_request_seconds_count"
    assert _value(samples, latency, route="/v1/classify", method="POST") == 2
    for stage in ("embed", "embed_batch"):
        assert _value(samples, "huse_stage_seconds_count", stage=stage) >= 1
    assert _value(samples, "huse_embed_batch_size_count", kind="text") >= 1


def test_two_apps_in_one_process_keep_separate_metrics(make_client):
    first, second = make_client(), make_client()
    first.get("/healthz")
    assert 'route="/healthz"' in first.get("/metrics").text
    assert 'route="/healthz"' not in second.get("/metrics").text


def test_openapi_docs_list_every_endpoint(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/search", "/v1/products/{product_id}", "/healthz"} <= set(paths)
    assert set(paths["/v1/products/{product_id}"]) == {"put", "get", "delete"}


def test_web_page_and_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text.replace("http://127.0.0.1", "")
    assert "https://" not in page.text


_BLAS_CHECK = """
import sys
from threadpoolctl import threadpool_info, threadpool_limits
from api.metrics import ApiMetrics
from api.services import Services
from api.settings import Settings
threadpool_limits(2, user_api="blas")
Services.open(Settings(model_dir=sys.argv[1], blas_threads=int(sys.argv[2])), ApiMetrics()).close()
print(sorted({p["num_threads"] for p in threadpool_info()
              if p["user_api"] == "blas" and "numpy" in p["filepath"]}))
"""


def test_server_runs_numpy_blas_on_the_configured_threads(model_dir):
    """BLAS worker threads busy-wait between calls: the service keeps numpy's BLAS on
    `blas_threads`. In a fresh process each: what other tests' servers set lingers in this one,
    and OpenBLAS reports some settings per thread."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for configured, expected in ((0, "[2]"), (1, "[1]")):  # 0: left as it was
        run = subprocess.run([sys.executable, "-c", _BLAS_CHECK, str(model_dir), str(configured)],
                             capture_output=True, text=True, cwd=root, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().splitlines()[-1] == expected
