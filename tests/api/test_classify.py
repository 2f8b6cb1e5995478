"""POST /v1/classify over HTTP: ranked labels per level, methods, k, the "other" threshold."""

from __future__ import annotations

import math

import pytest


def _check_levels(body: dict, k: int, heads: list[str]) -> None:
    assert [level["head"] for level in body["levels"]] == heads
    for level in body["levels"]:
        scores = [item["score"] for item in level["labels"]]
        assert 1 <= len(scores) <= k
        assert scores == sorted(scores, reverse=True)
        top = level["labels"][0]
        assert level["other"] == (top["score"] < body["threshold"])
        assert level["answer"] == ("other" if level["other"] else top["label"])


@pytest.fixture
def heads(reader) -> list[str]:
    return reader.get("/healthz").json()["model"]["heads"]


@pytest.mark.parametrize("method", ["linear", "centroid"])
def test_classify_title_image_and_both(reader, catalog_products, heads, method):
    product = catalog_products[0]
    photo = ("p.jpg", product.image_path.read_bytes(), "image/jpeg")
    for data, files in [
        ({"title": product.title}, None),
        ({}, {"image": photo}),
        ({"title": product.title}, {"image": photo}),
    ]:
        r = reader.post("/v1/classify", data={**data, "k": "3", "method": method}, files=files)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == method
        _check_levels(body, 3, heads)


@pytest.mark.parametrize("method", ["linear", "centroid"])
def test_path_is_one_consistent_category_joining_every_level(reader, catalog_products, method):
    product = catalog_products[0]
    files = {"image": ("p.jpg", product.image_path.read_bytes(), "image/jpeg")}
    body = reader.post("/v1/classify", data={"title": "blue denim skirt", "k": "100",
                                             "method": method}, files=files).json()
    path = body["path"]
    assert path["head"] == "path"
    scores = [item["score"] for item in path["labels"]]
    assert scores == sorted(scores, reverse=True)
    assert path["other"] == (scores[0] < body["threshold"])
    per_level = {level["head"]: {i["label"]: i["score"] for i in level["labels"]}
                 for level in body["levels"] if level["head"].startswith("level")}
    n_levels = len(per_level)
    for item in path["labels"][:5]:
        parts = item["label"].split(" > ")
        ancestors = [" > ".join(parts[: min(i + 1, len(parts))]) for i in range(n_levels)]
        level_scores = [per_level[f"level{i + 1}"][a] for i, a in enumerate(ancestors)]
        joined = (math.prod(level_scores) if method == "linear"
                  else sum(level_scores) / len(level_scores))
        assert item["score"] == pytest.approx(joined, rel=1e-4, abs=1e-6)


def test_linear_scores_are_probabilities(reader):
    body = reader.post("/v1/classify", data={"title": "red shoe", "k": "100"}).json()
    for level in body["levels"]:
        assert sum(item["score"] for item in level["labels"]) == pytest.approx(1.0, abs=1e-3)


def test_default_k_is_five(reader, heads, make_image):
    body = reader.post("/v1/classify", files={"image": ("a.png", make_image())}).json()
    _check_levels(body, 5, heads)


def test_threshold_override_marks_everything_other(make_client):
    client = make_client(other_threshold=1.01)
    body = client.post("/v1/classify", data={"title": "blue shirt"}).json()
    assert body["threshold"] == 1.01
    assert all(level["other"] and level["answer"] == "other" for level in body["levels"])
    none_other = make_client(other_threshold=-1.0).post("/v1/classify", data={"title": "x"})
    assert not any(level["other"] for level in none_other.json()["levels"])
