"""Photo search over HTTP (issue #11): a cropped, mirrored, re-encoded photo finds its product
through the served space; visual_weight is validated; near duplicates of a product."""

from __future__ import annotations

from embedder.images import load_image
from train.photo_eval import photo_query, query_seed


def _query(product) -> dict:
    data = photo_query(load_image(product.image_path), query_seed(product.id, 0))
    return {"image": ("screenshot.jpg", data)}


def test_a_screenshot_finds_its_product_unless_the_visual_weight_is_zero(reader,
                                                                          catalog_products):
    found = {}
    for weight in ("", "0"):
        firsts = []
        for product in catalog_products[:12]:
            form = {"k": "5", **({"visual_weight": weight} if weight else {})}
            r = reader.post("/v1/search", data=form, files=_query(product))
            assert r.status_code == 200, r.text
            firsts.append(r.json()["hits"][0]["id"] == product.id)
        found[weight] = sum(firsts)
    # the universal space alone knows classes, not products; the default weight recognises
    # the product itself (the tiny test backbones see 32 px, so not every time)
    assert found[""] > found["0"], found


def test_visual_weight_outside_zero_one_is_refused(reader, catalog_products):
    r = reader.post("/v1/search", data={"visual_weight": "1.5"},
                    files=_query(catalog_products[0]))
    assert r.status_code == 422
    title_only = reader.post("/v1/search", data={"title": catalog_products[0].title,
                                                 "visual_weight": "1"})
    assert title_only.status_code == 200 and title_only.json()["count"] > 0


def test_near_duplicates_of_a_product(reader, catalog_products):
    pid = catalog_products[2].id
    r = reader.get(f"/v1/products/{pid}/near-duplicates", params={"threshold": -1, "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "near-duplicates" and body["count"] == 3
    assert pid not in [h["id"] for h in body["hits"]]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert reader.get("/v1/products/no-such-id/near-duplicates").status_code == 404


def test_healthz_reports_the_served_visual_weight(reader, trained_model_dir):
    """The web page's slider starts at the bundle's validated default, read from /healthz."""
    from embedder.bundle import Bundle

    served = Bundle.load(trained_model_dir / "bundle").served
    reported = reader.get("/healthz").json()["model"]["visual_weight"]
    assert served is not None and reported == served.visual_weight
    assert 0.0 <= reported <= 1.0
