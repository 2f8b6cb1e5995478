"""The JSON API beside the forms: search/classify bodies, batches, listing, bulk upserts,
CORS and the category filter, over HTTP (TestClient, real model and index)."""

from __future__ import annotations

import base64

import pytest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_search_matches_the_form(reader, catalog_products):
    product = catalog_products[3]
    photo = product.image_path.read_bytes()
    form = reader.post(
        "/v1/search",
        data={"title": product.title, "k": "4"},
        files={"image": (product.image_path.name, photo)},
    ).json()
    r = reader.post("/v1/search", json={"title": product.title, "k": 4, "image_b64": _b64(photo)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "fused" and body["hits"][0]["id"] == product.id
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in form["hits"]]
    assert body["hits"][0]["score"] == pytest.approx(form["hits"][0]["score"], abs=1e-5)


def test_json_title_search_and_more_like_this(reader, catalog_products):
    body = reader.post("/v1/search", json={"title": catalog_products[0].title}).json()
    assert body["query"] == "text" and body["count"] == 5  # default k
    pid = catalog_products[5].id
    more = reader.post("/v1/search", json={"product_id": pid, "k": 6}).json()
    assert more["query"] == "product" and len(more["hits"]) == 6
    assert pid not in [h["id"] for h in more["hits"]]


def test_json_classify_text_image_and_product(reader, catalog_products):
    product = catalog_products[1]
    for body in (
        {"title": product.title, "k": 2},
        {"image_b64": _b64(product.image_path.read_bytes()), "method": "centroid"},
        {"product_id": product.id},
    ):
        r = reader.post("/v1/classify", json=body)
        assert r.status_code == 200, (body, r.text)
        out = r.json()
        assert out["path"]["head"] == "path" and out["levels"]
        assert all(1 <= len(level["labels"]) <= body.get("k", 5) for level in out["levels"])


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({}, "empty_request", None),
        ({"title": "  "}, "empty_request", None),
        ({"title": "x", "k": 0}, "invalid_request", "k"),
        ({"title": "x", "k": "many"}, "invalid_request", "k"),
        ({"title": "x", "image_b64": "not base64!"}, "invalid_request", "image_b64"),
        ({"title": "x", "colour": "red"}, "invalid_request", "colour"),
        ({"title": "x", "image_url": "http://example.com/a.jpg"}, "invalid_request", "image_url"),
        ({"title": "x", "product_id": "p1"}, "invalid_input", None),
    ],
)
def test_json_mistakes_name_the_field(reader, body, code, field):
    r = reader.post("/v1/search", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == code
    if field:
        assert field in r.json()["detail"]


def test_json_image_that_is_not_an_image(reader):
    r = reader.post("/v1/classify", json={"image_b64": _b64(b"name,title\n1,shoe\n" * 20)})
    assert r.status_code == 422 and r.json()["error"] == "not_an_image"


def test_other_content_types_are_refused(reader):
    r = reader.post("/v1/search", content=b"title=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    json_type = {"Content-Type": "application/json"}
    r = reader.post("/v1/search", content=b"{not json", headers=json_type)
    assert r.status_code == 422 and r.json()["error"] == "invalid_json"
    r = reader.post("/v1/search", json=["title"])
    assert r.status_code == 422


def test_category_filter_ignores_case_and_says_when_it_matches_nothing(reader, catalog_products):
    top = catalog_products[0].category[0]
    n_top = sum(1 for p in catalog_products if p.category[0] == top)
    for spelling in (top, top.lower(), f"  {top.upper()} "):
        body = reader.post("/v1/search", json={"title": "x", "k": 50, "category": spelling}).json()
        assert len(body["hits"]) == min(50, n_top) and body["notice"] is None
        assert all(h["category"].split(" > ")[0] == top for h in body["hits"])
    body = reader.post("/v1/search", json={"title": "x", "category": "Garden > Tools"}).json()
    assert body["hits"] == [] and body["count"] == 0
    assert "Garden > Tools" in body["notice"] and top in body["notice"]
    form = reader.post("/v1/search", data={"title": "x", "category": top.lower()}).json()
    assert form["count"] == 5


def test_attribute_filters_are_equality(client, auth, make_image):
    for pid, colour in (("f-1", "Red"), ("f-2", "Blue"), ("f-3", "Red")):
        r = client.put(
            f"/v1/products/{pid}",
            json={"title": "plain shirt", "category": "Test > Shirts",
                  "attributes": {"colour": colour}},
            headers=auth,
        )
        assert r.status_code == 200, r.text
    body = client.post(
        "/v1/search", json={"title": "plain shirt", "k": 10, "filters": {"colour": "Red"}}
    ).json()
    assert sorted(h["id"] for h in body["hits"]) == ["f-1", "f-3"]
    form = client.post(
        "/v1/search", data={"title": "plain shirt", "k": "10", "filters": '{"colour": "Red"}'}
    ).json()
    assert sorted(h["id"] for h in form["hits"]) == ["f-1", "f-3"]
    body = client.post(
        "/v1/search",
        json={"title": "shirt", "category": "test", "filters": {"colour": "Green"}},
    ).json()
    assert body["hits"] == [] and "colour='Green'" in body["notice"]


def test_search_batch_answers_each_query_in_order(reader, catalog_products):
    product = catalog_products[2]
    queries = [
        {"title": product.title, "k": 2},
        {"title": "x", "k": 0},
        {"image_b64": _b64(product.image_path.read_bytes()), "title": product.title, "k": 1},
        {},
        {"product_id": "missing"},
        {"product_id": product.id, "k": 3},
    ]
    r = reader.post("/v1/search:batch", json={"queries": queries})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(queries)
    assert len(results[0]["hits"]) == 2 and results[0]["query"] == "text"
    assert results[1]["error"] == "invalid_request" and "k" in results[1]["detail"]
    assert results[2]["hits"][0]["id"] == product.id
    assert results[3]["error"] == "empty_request"
    assert results[4]["error"] == "product_not_found"
    assert len(results[5]["hits"]) == 3
    single = reader.post("/v1/search", json=queries[0]).json()
    assert results[0] == single


def test_classify_batch_and_batch_bounds(reader):
    r = reader.post("/v1/classify:batch", json={"queries": [{"title": "boots"}, {"k": 2}]})
    results = r.json()["results"]
    assert results[0]["path"]["head"] == "path" and results[1]["error"] == "empty_request"
    for bad in ({"queries": []}, {"queries": [{"title": "x"}] * 65}, {"q": []}, [1]):
        r = reader.post("/v1/classify:batch", json=bad)
        assert r.status_code == 422 and "1 to 64" in r.json()["detail"]


def test_listing_walks_every_product_once(reader, catalog_products):
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        r = reader.get("/v1/products", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 7
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(p.id for p in catalog_products)
    assert len(seen) == len(set(seen)) and pages == -(-len(seen) // 7)


def test_listing_by_category_and_bad_cursor(reader, catalog_products):
    top = catalog_products[0].category[0]
    body = reader.get("/v1/products", params={"category": top.lower(), "limit": 500}).json()
    expected = {p.id for p in catalog_products if p.category[0] == top}
    assert {i["id"] for i in body["items"]} == expected and body["next_cursor"] is None
    none = reader.get("/v1/products", params={"category": "nothing-here"}).json()
    assert none["items"] == [] and "nothing-here" in none["notice"]
    for cursor in ("%%%", "LTE", "abc"):
        r = reader.get("/v1/products", params={"cursor": cursor})
        assert r.status_code == 422 and r.json()["error"] == "invalid_cursor"
    assert reader.get("/v1/products", params={"limit": 0}).status_code == 422


def test_listing_is_stable_under_writes(client, auth, catalog_products):
    first = client.get("/v1/products", params={"limit": 5}).json()
    gone = first["items"][-1]["id"]
    later = catalog_products[-1].id
    assert client.delete(f"/v1/products/{gone}", headers=auth).status_code == 200
    body = {"title": "renamed", "category": "Test > Renamed"}
    assert client.put(f"/v1/products/{later}", json=body, headers=auth).status_code == 200
    assert client.put("/v1/products/brand-new", json=body, headers=auth).status_code == 200
    rest, cursor = [], first["next_cursor"]
    while cursor:
        page = client.get("/v1/products", params={"cursor": cursor, "limit": 50}).json()
        rest += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    listed = [i["id"] for i in first["items"]] + rest
    expected = {p.id for p in catalog_products} | {"brand-new"}
    assert set(listed) == expected and len(listed) == len(expected)  # `gone` was on page 1
    assert rest[-1] == "brand-new" and rest.count(later) == 1


def test_bulk_upsert_one_transaction_with_item_status(client, auth, make_image, catalog_products):
    size = client.get("/healthz").json()["index"]["size"]
    existing = catalog_products[0].id
    items = [
        {"id": "b-1", "title": "red shirt", "category": "apparel > topwear",
         "image_b64": _b64(make_image((220, 10, 10)))},
        {"id": "b-2", "title": "", "category": "Apparel"},
        {"id": existing, "title": "renamed", "category": "Apparel > Topwear",
         "attributes": {"colour": "Blue", "size": 42}},
        {"id": "b-3", "title": "bad photo", "category": "Apparel",
         "image_b64": _b64(b"not an image at all" * 10)},
        {"id": "b-1", "title": "again", "category": "Apparel"},
        {"title": "no id", "category": "Apparel"},
    ]
    r = client.post("/v1/products:bulk", json={"items": items}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    status = [(i["id"], i["status"], i["error"]) for i in body["items"]]
    assert status == [
        ("b-1", "created", None),
        ("b-2", "error", "invalid_request"),
        (existing, "updated", None),
        ("b-3", "error", "not_an_image"),
        ("b-1", "error", "duplicate_id"),
        (None, "error", "invalid_request"),
    ]
    assert body["written"] == 2
    assert client.get("/healthz").json()["index"]["size"] == size + 1
    got = client.get("/v1/products/b-1").json()
    assert got["category"] == "apparel > topwear" and got["image_url"]
    assert client.get(f"/v1/products/{existing}").json()["attributes"] == {
        "colour": "Blue", "size": "42"}
    assert client.get("/v1/products/b-3").status_code == 404


def test_bulk_needs_the_key(client):
    r = client.post("/v1/products:bulk", json={"items": [{"id": "x", "title": "t",
                                                          "category": "A"}]})
    assert r.status_code == 401


def test_put_accepts_json(client, auth, make_image):
    photo = make_image((30, 160, 60), (80, 60))
    r = client.put(
        "/v1/products/j-1",
        json={"title": "green sneaker", "category": "Footwear>Sneakers",
              "attributes": {"colour": "green"}, "image_b64": _b64(photo)},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["category"] == "Footwear > Sneakers"
    assert client.get("/v1/products/j-1/image").content == photo
    r = client.put("/v1/products/j-2", json={"title": "x", "category": " > "}, headers=auth)
    assert r.status_code == 422 and "category" in r.json()["detail"]


def test_cors_preflight_and_headers(reader):
    r = reader.options(
        "/v1/search",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = reader.post("/v1/search", json={}, headers={"Origin": "https://shop.example"})
    assert r.status_code == 422 and r.headers["access-control-allow-origin"] == "*"


def test_cors_origins_are_configurable(make_client):
    client = make_client(cors_origins=["https://shop.example"])
    ok = client.options("/v1/search", headers={"Origin": "https://shop.example",
                                               "Access-Control-Request-Method": "POST"})
    assert ok.headers["access-control-allow-origin"] == "https://shop.example"
    other = client.options("/v1/search", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_batch_routes_have_their_own_body_limit(make_client):
    client = make_client(max_upload_bytes=4096, max_batch_body_bytes=1_000_000)
    padded = b'{"queries": [{"title": "shirt", "k": 1}]}' + b" " * 300_000  # valid JSON
    json_type = {"Content-Type": "application/json"}
    r = client.post("/v1/search:batch", content=padded, headers=json_type)
    assert r.status_code == 200 and len(r.json()["results"]) == 1
    single = client.post("/v1/search", content=b'{"title": "shirt"}' + b" " * 300_000,
                         headers=json_type)
    assert single.status_code == 413 and single.json()["error"] == "too_many_bytes"
    r = client.post("/v1/search:batch", content=padded + b" " * 1_000_000, headers=json_type)
    assert r.status_code == 413
