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


def _on_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _record_threads(services, seen: list[bool]) -> None:
    """Wrap the bundle's served search to note whether each call ran on the event loop."""
    search = services.bundle.served_search

    def recorded(*args, **kwargs):
        seen.append(_on_event_loop())
        return search(*args, **kwargs)

    services.bundle.served_search = recorded


def test_fast_searches_run_on_the_event_loop_slow_or_filtered_ones_on_a_thread(
        make_client, catalog_products):
    """No thread hand-off for an in-memory search that has been fast; filtered searches (an
    exact subset scan) and a service told 0 ms always hand off."""
    title = {"title": catalog_products[0].title, "k": "3"}
    for limit, expected in ((60_000.0, True), (0.0, False)):
        client = make_client(inline_search_max_ms=limit)
        seen: list[bool] = []
        _record_threads(client.app.state.services, seen)
        assert client.post("/v1/search", data=title).status_code == 200
        assert client.post("/v1/search", data={**title, "filters": '{"colour": "Red"}'}
                           ).status_code == 200
        assert seen == [expected, False]


def test_a_search_during_a_write_waits_on_a_thread_and_the_loop_keeps_serving(
        make_client, catalog_products):
    """A write holds the index: the search, tried on the event loop, must not block it; it
    answers once the write is done, and the loop answers other requests meanwhile."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    client = make_client(inline_search_max_ms=60_000.0)
    services = client.app.state.services
    seen: list[bool] = []
    _record_threads(services, seen)
    holding, release = threading.Event(), threading.Event()

    def write() -> None:
        with services.index._lock.write():
            holding.set()
            release.wait(30)

    with ThreadPoolExecutor(2) as pool:
        writer = pool.submit(write)
        assert holding.wait(10)
        search = pool.submit(client.post, "/v1/search",
                             data={"title": catalog_products[0].title, "k": "3"})
        time.sleep(0.3)
        started = time.perf_counter()
        assert client.get("/openapi.json").status_code == 200  # the loop is not blocked
        assert time.perf_counter() - started < 5
        assert not search.done()  # waiting for the write, on a thread
        release.set()
        writer.result(10)
        answer = search.result(30)
    assert answer.status_code == 200 and answer.json()["count"] == 3
    assert seen == [True, False]  # tried on the loop (IndexBusy), then run on a thread
