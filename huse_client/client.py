"""`Client` and `AsyncClient`: the same calls, each described once as a `_Call` (method, path,
body, how to read the answer) and sent by a sync or an async httpx transport.

Images go as base64 inside JSON (`image_b64`): a path, bytes, or a PIL image. A 503 (model or
index briefly unavailable), a 429, or a failed connection is retried `retries` times with
exponential backoff, honouring Retry-After; every other error raises `HuseAPIError`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from huse_client.types import (
    BulkItem,
    Classification,
    HuseAPIError,
    Product,
    SearchResult,
)

ImageInput = str | os.PathLike | bytes | Any  # Any: a PIL.Image.Image
RETRY_STATUSES = (429, 503)
MAX_BATCH_QUERIES = 64  # the server's bound per :batch call
MAX_RETRY_AFTER_S = 30.0


def encode_image(image: ImageInput) -> str:
    """base64 of the image file's bytes: a path is read, bytes are sent as they are, a PIL
    image is encoded as PNG."""
    if isinstance(image, bytes):
        data = image
    elif isinstance(image, (str, os.PathLike)):
        data = Path(image).read_bytes()
    elif hasattr(image, "save"):  # PIL.Image.Image, without importing Pillow here
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    else:
        raise TypeError(f"image must be a path, bytes or a PIL image, got {type(image).__name__}")
    return base64.b64encode(data).decode("ascii")


def _drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def query_body(
    image: ImageInput | None = None,
    title: str | None = None,
    k: int | None = None,
    product_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One search/classify query as the API's JSON (for `search_batch`/`classify_batch`)."""
    return _drop_none(
        {
            "image_b64": encode_image(image) if image is not None else None,
            "title": title,
            "k": k,
            "product_id": product_id,
            **extra,
        }
    )


def product_body(
    title: str,
    category: str,
    image: ImageInput | None = None,
    attributes: Mapping[str, str] | None = None,
    **ids: str,
) -> dict[str, Any]:
    return _drop_none(
        {
            **ids,
            "title": title,
            "category": category,
            "attributes": dict(attributes) if attributes else None,
            "image_b64": encode_image(image) if image is not None else None,
        }
    )


def _results(parse: Callable[[dict], Any]) -> Callable[[dict], list[Any]]:
    def read(data: dict) -> list[Any]:
        return [
            HuseAPIError.from_body(None, r) if "error" in r else parse(r) for r in data["results"]
        ]

    return read


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    parse: Callable[[Any], Any] = lambda data: data
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> dict[str, Any]:
        """httpx keyword arguments of this call."""
        return {"json": self.json, "params": self.params or None}


class _Calls:
    """Every API call, described once; subclasses only send."""

    @staticmethod
    def _search(**query: Any) -> _Call:
        return _Call("POST", "/v1/search", SearchResult.from_json, query_body(**query))

    @staticmethod
    def _classify(**query: Any) -> _Call:
        return _Call("POST", "/v1/classify", Classification.from_json, query_body(**query))

    @staticmethod
    def _batch(route: str, queries: Iterable[Mapping[str, Any]], parse: Callable) -> _Call:
        body = {"queries": [dict(q) for q in queries]}
        if not 1 <= len(body["queries"]) <= MAX_BATCH_QUERIES:
            raise ValueError(f"a batch takes 1 to {MAX_BATCH_QUERIES} queries")
        return _Call("POST", f"/v1/{route}:batch", _results(parse), body)

    @staticmethod
    def _put(product_id: str, **product: Any) -> _Call:
        path = f"/v1/products/{_quote(product_id)}"
        return _Call("PUT", path, lambda d: Product(**d), product_body(**product))

    @staticmethod
    def _put_many(products: Iterable[Mapping[str, Any]]) -> _Call:
        items = [product_body(**p) for p in products]
        return _Call("POST", "/v1/products:bulk",
                     lambda d: [BulkItem(**i) for i in d["items"]], {"items": items})

    @staticmethod
    def _get(product_id: str) -> _Call:
        return _Call("GET", f"/v1/products/{_quote(product_id)}", lambda d: Product(**d))

    @staticmethod
    def _delete(product_id: str) -> _Call:
        return _Call("DELETE", f"/v1/products/{_quote(product_id)}", lambda d: None)

    @staticmethod
    def _page(cursor: str | None, category: str | None, page_size: int) -> _Call:
        params = _drop_none({"cursor": cursor, "category": category, "limit": page_size})
        return _Call("GET", "/v1/products", lambda d: d, params=params)


def _quote(product_id: str) -> str:
    from urllib.parse import quote

    return quote(product_id, safe="")


class _Base(_Calls):
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries and backoff must be >= 0, got {retries}, {backoff}")
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retrying, or None when this answer is final."""
        if attempt >= self.retries:
            return None
        if response is not None and response.status_code not in RETRY_STATUSES:
            return None
        after = response.headers.get("Retry-After") if response is not None else None
        if after is not None and after.replace(".", "", 1).isdigit():
            return min(float(after), MAX_RETRY_AFTER_S)
        return self.backoff * 2**attempt

    def _settle(
        self, call: _Call, attempt: int, answer: httpx.Response | httpx.TransportError
    ) -> tuple[bool, Any]:
        """(True, the parsed result) when `answer` is final, else (False, seconds to wait);
        a final error raises."""
        response = answer if isinstance(answer, httpx.Response) else None
        delay = self._delay(attempt, response)
        if delay is not None:
            return False, delay
        if response is None:
            raise answer
        return True, self._read(call, response)

    @staticmethod
    def _read(call: _Call, response: httpx.Response) -> Any:
        try:
            data = response.json()
        except ValueError:
            data = response.text
        if response.is_error:
            raise HuseAPIError.from_body(response.status_code, data)
        return call.parse(data)


class Client(_Base):
    """Blocking client; use as a context manager or call `close()`."""

    def __init__(
        self, url: str, api_key: str | None = None, *,
        transport: httpx.BaseTransport | None = None, **options: Any,
    ) -> None:
        super().__init__(url, api_key, **options)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> Any:
        for attempt in itertools.count():
            try:
                answer = self._http.request(call.method, call.path, **call.request)
            except httpx.TransportError as e:
                answer = e
            done, value = self._settle(call, attempt, answer)
            if done:
                return value
            time.sleep(value)

    def search(self, image: ImageInput | None = None, title: str | None = None,
               k: int | None = None, *, product_id: str | None = None,
               category: str | None = None, filters: Mapping[str, str] | None = None,
               visual_weight: float | None = None) -> SearchResult:
        return self._send(self._search(image=image, title=title, k=k, product_id=product_id,
                                       category=category, filters=filters,
                                       visual_weight=visual_weight))

    def classify(self, image: ImageInput | None = None, title: str | None = None,
                 k: int | None = None, *, product_id: str | None = None,
                 method: Literal["linear", "centroid"] | None = None) -> Classification:
        return self._send(self._classify(image=image, title=title, k=k, product_id=product_id,
                                         method=method))

    def search_batch(self, queries: Iterable[Mapping[str, Any]]
                     ) -> list[SearchResult | HuseAPIError]:
        """`queries` as built by `query_body(...)`; one result or error per query, in order."""
        return self._send(self._batch("search", queries, SearchResult.from_json))

    def classify_batch(self, queries: Iterable[Mapping[str, Any]]
                       ) -> list[Classification | HuseAPIError]:
        return self._send(self._batch("classify", queries, Classification.from_json))

    def put(self, product_id: str, *, title: str, category: str,
            image: ImageInput | None = None,
            attributes: Mapping[str, str] | None = None) -> Product:
        return self._send(self._put(product_id, title=title, category=category, image=image,
                                    attributes=attributes))

    def put_many(self, products: Iterable[Mapping[str, Any]]) -> list[BulkItem]:
        """Upsert `{"id", "title", "category", "image"?, "attributes"?}` items in one call
        (one transaction on the server); one status per item, in order."""
        return self._send(self._put_many(products))

    def get(self, product_id: str) -> Product:
        return self._send(self._get(product_id))

    def delete(self, product_id: str) -> None:
        self._send(self._delete(product_id))

    def iter_products(self, category: str | None = None, page_size: int = 100
                      ) -> Iterator[Product]:
        """Every product (in a category), following the listing's cursor page by page."""
        cursor = None
        while True:
            page = self._send(self._page(cursor, category, page_size))
            yield from (Product(**item) for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def health(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/healthz"))


class AsyncClient(_Base):
    """The same calls for asyncio; `async with AsyncClient(...) as huse:`."""

    def __init__(
        self, url: str, api_key: str | None = None, *,
        transport: httpx.AsyncBaseTransport | None = None, **options: Any,
    ) -> None:
        super().__init__(url, api_key, **options)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        for attempt in itertools.count():
            try:
                answer = await self._http.request(call.method, call.path, **call.request)
            except httpx.TransportError as e:
                answer = e
            done, value = self._settle(call, attempt, answer)
            if done:
                return value
            await asyncio.sleep(value)

    async def search(self, image: ImageInput | None = None, title: str | None = None,
                     k: int | None = None, *, product_id: str | None = None,
                     category: str | None = None, filters: Mapping[str, str] | None = None,
                     visual_weight: float | None = None) -> SearchResult:
        return await self._send(self._search(image=image, title=title, k=k,
                                             product_id=product_id, category=category,
                                             filters=filters, visual_weight=visual_weight))

    async def classify(self, image: ImageInput | None = None, title: str | None = None,
                       k: int | None = None, *, product_id: str | None = None,
                       method: Literal["linear", "centroid"] | None = None) -> Classification:
        return await self._send(self._classify(image=image, title=title, k=k,
                                               product_id=product_id, method=method))

    async def search_batch(self, queries: Iterable[Mapping[str, Any]]
                           ) -> list[SearchResult | HuseAPIError]:
        return await self._send(self._batch("search", queries, SearchResult.from_json))

    async def classify_batch(self, queries: Iterable[Mapping[str, Any]]
                             ) -> list[Classification | HuseAPIError]:
        return await self._send(self._batch("classify", queries, Classification.from_json))

    async def put(self, product_id: str, *, title: str, category: str,
                  image: ImageInput | None = None,
                  attributes: Mapping[str, str] | None = None) -> Product:
        return await self._send(self._put(product_id, title=title, category=category,
                                          image=image, attributes=attributes))

    async def put_many(self, products: Iterable[Mapping[str, Any]]) -> list[BulkItem]:
        return await self._send(self._put_many(products))

    async def get(self, product_id: str) -> Product:
        return await self._send(self._get(product_id))

    async def delete(self, product_id: str) -> None:
        await self._send(self._delete(product_id))

    async def iter_products(self, category: str | None = None, page_size: int = 100
                            ) -> AsyncIterator[Product]:
        cursor = None
        while True:
            page = await self._send(self._page(cursor, category, page_size))
            for item in page["items"]:
                yield Product(**item)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def health(self) -> dict[str, Any]:
        return await self._send(_Call("GET", "/healthz"))
