"""POST /v1/search over HTTP: by image, title, both, or product id, with k and category filter."""

from __future__ import annotations

import pytest


def _photo(product) -> dict:
    return {"image": (product.image_path.name, product.image_path.read_bytes())}


def test_same_image_and_title_finds_the_product_first(reader, catalog_products):
    product = catalog_products[3]
    r = reader.post("/v1/search", data={"title": product.title, "k": "4"}, files=_photo(product))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "fused" and body["count"] == len(body["hits"]) == 4
    top = body["hits"][0]
    assert top["id"] == product.id
    assert top["score"] == pytest.approx(1.0, abs=1e-3)
    assert top["title"] == product.title
    assert top["category"] == " > ".join(product.category)
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_hits_link_to_their_images(reader, catalog_products):
    body = reader.post("/v1/search", data={"title": catalog_products[0].title, "k": "3"}).json()
    assert body["query"] == "text"
    for hit in body["hits"]:
        r = reader.get(hit["image_url"])
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("image/")
        assert len(r.content) > 100


def test_more_like_this_excludes_the_product(reader, catalog_products):
    pid = catalog_products[5].id
    body = reader.post("/v1/search", data={"product_id": pid, "k": "6"}).json()
    assert body["query"] == "product"
    assert len(body["hits"]) == 6
    assert pid not in [h["id"] for h in body["hits"]]


def test_category_prefix_filters_hits(reader, catalog_products):
    top_level = catalog_products[0].category[0]
    body = reader.post(
        "/v1/search", files=_photo(catalog_products[1]), data={"category": top_level, "k": "10"}
    ).json()
    assert body["hits"]
    assert all(h["category"].startswith(top_level) for h in body["hits"])
    n_matching = sum(1 for p in catalog_products if p.category[0] == top_level)
    assert len(body["hits"]) == min(10, n_matching)


def test_product_id_and_query_together_is_refused(reader, catalog_products):
    r = reader.post("/v1/search", data={"product_id": catalog_products[0].id, "title": "x"})
    assert r.status_code == 422
    assert "either product_id" in r.json()["detail"]
