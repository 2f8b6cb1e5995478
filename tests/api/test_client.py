"""huse_client against a live uvicorn server (127.0.0.1, free port): sync and async calls,
paths/bytes/PIL images, errors, the listing cursor, and retries on 503."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from PIL import Image

from huse_client import AsyncClient, Client, HuseAPIError, Product, SearchResult
from huse_client.client import query_body


def test_search_and_classify_with_each_image_kind(live_url, catalog_products):
    product = catalog_products[3]
    with Client(live_url) as huse:
        by_path = huse.search(image=product.image_path, title=product.title, k=4)
        assert isinstance(by_path, SearchResult) and by_path.query == "fused"
        assert by_path.hits[0].id == product.id and len(by_path.hits) == 4
        by_bytes = huse.search(image=product.image_path.read_bytes(), title=product.title, k=4)
        assert [h.id for h in by_bytes.hits] == [h.id for h in by_path.hits]
        with Image.open(product.image_path) as im:
            by_pil = huse.search(image=im.convert("RGB"), k=3)
        assert by_pil.query == "image" and len(by_pil.hits) == 3
        more = huse.search(product_id=product.id, k=5, category=product.category[0].lower())
        assert product.id not in [h.id for h in more.hits]
        assert all(h.category.startswith(product.category[0]) for h in more.hits)
        classes = huse.classify(title=product.title, k=2, method="centroid")
        assert classes.method == "centroid" and classes.path.head == "path"
        assert all(len(level.labels) <= 2 for level in classes.levels)


def test_batches_keep_order_and_errors(live_url, catalog_products):
    with Client(live_url) as huse:
        results = huse.search_batch(
            [query_body(title=catalog_products[0].title, k=2), query_body(k=2),
             query_body(product_id=catalog_products[1].id, k=1)]
        )
        assert isinstance(results[0], SearchResult) and len(results[0].hits) == 2
        assert isinstance(results[1], HuseAPIError) and results[1].error == "empty_request"
        assert len(results[2].hits) == 1
        labels = huse.classify_batch([query_body(title="boots")])
        assert labels[0].levels


def test_errors_raise_with_code_and_detail(live_keyed_url):
    with Client(live_keyed_url) as anonymous:
        with pytest.raises(HuseAPIError) as e:
            anonymous.put("x", title="t", category="A")
        assert e.value.status == 401 and e.value.error == "missing_key"
        with pytest.raises(HuseAPIError) as e:
            anonymous.get("no-such-product")
        assert e.value.status == 404 and e.value.error == "product_not_found"
        with pytest.raises(HuseAPIError) as e:
            anonymous.search(title="x", k=0)
        assert e.value.status == 422 and "k" in e.value.detail


def test_put_get_iterate_delete(live_keyed_url, api_key, make_image, catalog_products):
    with Client(live_keyed_url, api_key) as huse:
        made = huse.put("c-1", title="green sneaker", category="Footwear > Sneakers",
                        image=make_image((20, 200, 20)), attributes={"colour": "Green"})
        assert made == Product("c-1", "green sneaker", "Footwear > Sneakers",
                               {"colour": "Green"}, "/v1/products/c-1/image")
        assert huse.get("c-1") == made
        items = huse.put_many([
            {"id": "c-2", "title": "blue sneaker", "category": "Footwear > Sneakers"},
            {"id": "c-3", "title": "", "category": "Footwear"},
        ])
        assert [(i.id, i.status) for i in items] == [("c-2", "created"), ("c-3", "error")]
        listed = list(huse.iter_products(page_size=9))
        assert len(listed) == len(catalog_products) + 2
        assert len({p.id for p in listed}) == len(listed) and listed[-1].id == "c-2"
        sneakers = [p.id for p in huse.iter_products(category="footwear > SNEAKERS")]
        assert sneakers == ["c-1", "c-2"]
        huse.delete("c-1")
        with pytest.raises(HuseAPIError):
            huse.get("c-1")


def test_async_client(live_keyed_url, api_key, catalog_products):
    async def run() -> tuple:
        async with AsyncClient(live_keyed_url, api_key) as huse:
            found = await asyncio.gather(
                *(huse.search(image=p.image_path, title=p.title, k=1) for p in catalog_products[:6])
            )
            await huse.put("a-1", title="async product", category="Test")
            got = await huse.get("a-1")
            ids = [p.id async for p in huse.iter_products(category="test", page_size=1)]
            classes = await huse.classify(image=catalog_products[0].image_path)
            await huse.delete("a-1")
            return found, got, ids, classes

    found, got, ids, classes = asyncio.run(run())
    assert [r.hits[0].id for r in found] == [p.id for p in catalog_products[:6]]
    assert got.title == "async product" and ids == ["a-1"] and classes.levels


class Flaky(httpx.BaseTransport):
    """Answers 503 to the first `failures` requests, then passes them to the live server."""

    def __init__(self, failures: int, retry_after: str | None = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.seen = 0
        self.real = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen <= self.failures:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(503, json={"error": "unavailable", "detail": "warming up"},
                                  headers=headers)
        return self.real.handle_request(request)


def test_retries_on_503_then_gives_up(live_url):
    flaky = Flaky(failures=2, retry_after="0")
    with Client(live_url, transport=flaky, retries=3, backoff=0.01) as huse:
        assert huse.search(title="shirt", k=1).hits
    assert flaky.seen == 3
    always = Flaky(failures=10)
    with Client(live_url, transport=always, retries=2, backoff=0.01) as huse:
        with pytest.raises(HuseAPIError) as e:
            huse.search(title="shirt")
    assert e.value.status == 503 and always.seen == 3


def test_no_retry_on_client_errors(live_url):
    calls = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            calls.append(request.url.path)
            return super().handle_request(request)

    with Client(live_url, transport=Counting(), retries=3, backoff=0.01) as huse:
        with pytest.raises(HuseAPIError):
            huse.search()
    assert calls == ["/v1/search"]
