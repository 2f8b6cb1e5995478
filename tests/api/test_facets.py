"""GET /v1/facets: category prefixes and attribute values counted over the live index."""

from __future__ import annotations

import json
from collections import Counter


def test_facets_count_every_prefix_and_attribute_value(reader, catalog_products):
    r = reader.get("/v1/facets")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == len(catalog_products)
    expected = Counter(
        " > ".join(p.category[:depth])
        for p in catalog_products
        for depth in range(1, len(p.category) + 1)
    )
    got = {c["path"]: c["count"] for c in body["categories"]}
    assert got == dict(expected)
    assert [c["path"] for c in body["categories"]] == sorted(got)
    assert all(c["depth"] == c["path"].count(" > ") + 1 for c in body["categories"])
    attributes = {a["name"]: a for a in body["attributes"]}
    assert list(attributes) == sorted(catalog_products[0].attributes)
    colours = Counter(p.attributes["colour"] for p in catalog_products)
    listed = attributes["colour"]["values"]
    assert {v["value"]: v["count"] for v in listed} == dict(colours)
    assert [v["count"] for v in listed] == sorted((v["count"] for v in listed), reverse=True)


def test_limit_caps_values_and_is_validated(reader):
    body = reader.get("/v1/facets", params={"limit": 2}).json()
    colour = next(a for a in body["attributes"] if a["name"] == "colour")
    assert len(colour["values"]) == 2 and colour["distinct"] > 2
    for bad in (0, 1001, "x"):
        r = reader.get("/v1/facets", params={"limit": bad})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_facets_follow_writes(client, auth, make_image):
    before = client.get("/v1/facets").json()
    r = client.put(
        "/v1/products/new-1",
        data={
            "title": "teal canvas tote",
            "category": "Brand New > Totes",
            "attributes": json.dumps({"colour": "sea glass"}),
        },
        files={"image": ("t.png", make_image())},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    after = client.get("/v1/facets").json()
    assert after["total"] == before["total"] + 1
    paths = {c["path"]: c["count"] for c in after["categories"]}
    assert paths["Brand New"] == 1 and paths["Brand New > Totes"] == 1
    colour = next(a for a in after["attributes"] if a["name"] == "colour")
    assert {"value": "sea glass", "count": 1} in colour["values"]
    assert client.delete("/v1/products/new-1", headers=auth).status_code == 200
    assert client.get("/v1/facets").json() == before
