"""The OpenAPI document tells the truth about the routes, and /docs and /redoc work offline."""

from __future__ import annotations

import json
import re

import pytest

_OPERATIONS = ("get", "put", "post", "delete")


@pytest.fixture(scope="module")
def document(reader) -> dict:
    r = reader.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method in _OPERATIONS:
            if method in item:
                yield path, method, item[method]


def test_every_ref_resolves(document):
    text = json.dumps(document)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(document["components"]["schemas"])


def test_errors_use_the_error_model_with_examples(document):
    error = document["components"]["schemas"]["ErrorPublic"]
    assert set(error["properties"]) == {"error", "detail", "request_id"}
    for path, method, op in _operations(document):
        statuses = {int(s) for s in op["responses"]}
        assert {500, 503} <= statuses or path == "/metrics", (path, method)
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorPublic"}, path
            assert set(content["example"]) == {"error", "detail", "request_id"}
        assert "HTTPValidationError" not in json.dumps(op)


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/v1/search", "post", {200, 400, 404, 413, 415, 422, 500, 503}),
        ("/v1/classify:batch", "post", {200, 400, 413, 415, 422, 500, 503}),
        ("/v1/products:bulk", "post", {200, 400, 401, 403, 413, 415, 422, 500, 503}),
        ("/v1/products/{product_id}", "put", {200, 400, 401, 403, 413, 415, 422, 500, 503}),
        ("/v1/products/{product_id}", "delete", {200, 401, 403, 404, 422, 500, 503}),
        ("/v1/products", "get", {200, 422, 500, 503}),
    ],
)
def test_documented_statuses(document, path, method, expected):
    assert {int(s) for s in document["paths"][path][method]["responses"]} == expected


def _has_examples(schema: dict, schemas: dict) -> bool:
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    return bool(schema.get("examples"))


def test_examples_on_every_request_and_response(document):
    schemas = document["components"]["schemas"]
    for path, _method, op in _operations(document):
        body = op.get("requestBody")
        if body is not None:
            for media_type, content in body["content"].items():
                if media_type == "application/json":
                    assert _has_examples(content["schema"], schemas), (path, media_type)
        ok = op["responses"]["200"]["content"]
        if "application/json" in ok:
            assert _has_examples(ok["application/json"]["schema"], schemas), path


def test_search_takes_json_or_a_form(document):
    content = document["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"]["$ref"].endswith("/SearchCreate")
    form = content["multipart/form-data"]["schema"]["properties"]
    assert form["image"]["format"] == "binary" and "image_b64" not in form
    create = document["components"]["schemas"]["SearchCreate"]["properties"]
    assert {"title", "image_b64", "product_id", "k", "category", "filters", "visual_weight"} <= set(
        create
    )
    assert create["k"]["maximum"] == 100 and "url" not in json.dumps(create).lower()


def test_docs_pages_use_only_local_assets(reader):
    for page in ("/docs", "/redoc"):
        html = reader.get(page).text
        assert "cdn" not in html.lower() and "https://" not in html
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert src.startswith("/"), src
            assert reader.get(src).status_code == 200, src


@pytest.mark.browser
def test_docs_render_with_the_network_blocked(chromium, live_url, tmp_path):
    from playwright.sync_api import expect

    outside: list[tuple[str, str]] = []

    def local_only(route):
        if route.request.url.startswith(live_url):
            route.continue_()
        else:
            outside.append((route.request.resource_type, route.request.url))
            route.abort()

    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.route("**/*", local_only)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_url}/docs")
    # Generous timeouts: the 2-core machine renders the whole document while other jobs run.
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("HUSE search", timeout=60_000)
    expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/search:batch" in p for p in paths), paths
    page.screenshot(path=str(tmp_path / "docs.png"))

    page.goto(f"{live_url}/redoc")
    expect(page.locator("h1").first).to_contain_text("HUSE search", timeout=60_000)
    expect(page.get_by_text("/v1/products:bulk").first).to_be_attached(timeout=30_000)
    assert not errors, errors
    # Only ReDoc's decorative "by Redocly" logo points outside; everything it needs
    # to render (script, styles, fonts, the document) came from the server.
    assert all(kind == "image" for kind, _ in outside), outside
