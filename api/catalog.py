"""Product writes and reads: upsert one or many (one durable transaction per call), delete,
get, the stored image, and a stable cursor listing.

Writes embed through the same micro-batcher as searches, store uploads content-addressed,
and delete an upload once no live product records it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.filters import resolve_filter
from api.media import ImageStore, StoredImageResponse
from api.metrics import ApiMetrics
from api.requests import ProductBulkItemCreate, ProductCreate
from api.results import answer_each
from api.schemas import (
    BatchErrorPublic,
    BulkItemPublic,
    DeletedPublic,
    ProductPublic,
    ProductsBulkPublic,
    ProductsPublic,
)
from index.errors import ProductNotFound
from index.metadata import ProductRecord
from index.rwlock import RWLock


def image_url(product_id: str, recorded_image: str) -> str | None:
    return f"/v1/products/{quote(product_id, safe='')}/image" if recorded_image else None


def public(record: ProductRecord) -> ProductPublic:
    return ProductPublic(
        id=record.id,
        title=record.title,
        category=record.category,
        attributes=dict(record.attributes or {}),
        image_url=image_url(record.id, record.image),
    )


def encode_cursor(key: int) -> str:
    return base64.urlsafe_b64encode(str(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The key a listing continues after (0: from the start); 422 for a cursor we never gave."""
    if not cursor:
        return 0
    try:
        key = int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = -1
    if key < 0:
        raise ApiError(422, "invalid_cursor", f"cursor {cursor[:40]!r} is not one this API gave")
    return key


@dataclasses.dataclass
class _Prepared:
    """One product ready to write: its record, its vector and its validated upload."""

    record: ProductRecord
    vector: np.ndarray
    image: bytes | None
    decoded: Any


class Catalog:
    """The index's products as a resource; `decode`/`embed` are the search service's."""

    def __init__(
        self,
        index: Any,
        images: ImageStore,
        metrics: ApiMetrics,
        decode: Callable[[bytes | None, str | None], Awaitable[Any]],
        embed: Callable[[Any], Awaitable[np.ndarray]],
    ) -> None:
        self.index = index
        self.images = images
        self.metrics = metrics
        self._decode = decode
        self._embed = embed
        # Written from storing an upload through the index write, and from a write through
        # deleting the uploads it left unreferenced, so no upload is deleted while a write still
        # needs it; read while an image GET looks up its record and opens the file.
        self._uploads_lock = RWLock()

    async def _prepare(self, product_id: str, product: ProductCreate) -> _Prepared:
        query = await self._decode(product.image, product.title)
        vector = np.asarray(await self._embed(query), dtype=np.float32)
        record = ProductRecord(
            id=product_id,
            title=product.title,
            category=product.category,
            image="",
            attributes=dict(product.attributes),
        )
        return _Prepared(record, vector, product.image, query.image)

    # ---- writes -------------------------------------------------------------------------

    async def put(self, product_id: str, product: ProductCreate) -> ProductPublic:
        """Embed the product and upsert it; durable (SQLite commit) when this returns."""
        prepared = await self._prepare(product_id, product)
        with self.metrics.stage("write"):
            records, _ = await run_in_threadpool(self._write, [prepared])
        return public(records[0])

    async def put_many(
        self, items: Sequence[ProductBulkItemCreate | BatchErrorPublic], ids: Sequence[str | None]
    ) -> ProductsBulkPublic:
        """Upsert every valid item in one transaction; the others are reported, not written.
        `ids`: each item's id as sent (reported for items that failed validation)."""
        seen: set[str] = set()
        jobs: list[Awaitable[Any]] = []
        for item in items:
            jobs.append(self._prepare_item(item, seen))
        prepared = await answer_each(jobs)
        ready = [p for p in prepared if isinstance(p, _Prepared)]
        written: dict[str, str] = {}
        if ready:
            with self.metrics.stage("write"):
                _, written = await run_in_threadpool(self._write, ready)
        out = []
        for pid, result in zip(ids, prepared, strict=True):
            if isinstance(result, BatchErrorPublic):
                out.append(BulkItemPublic(id=pid, status="error", **result.model_dump()))
            else:
                out.append(BulkItemPublic(id=pid, status=written[result.record.id]))
        return ProductsBulkPublic(items=out, written=len(ready))

    async def _prepare_item(
        self, item: ProductBulkItemCreate | BatchErrorPublic, seen: set[str]
    ) -> _Prepared | BatchErrorPublic:
        if isinstance(item, BatchErrorPublic):
            return item
        if item.id in seen:
            return BatchErrorPublic(
                error="duplicate_id", detail=f"id {item.id!r} appears earlier in this call"
            )
        seen.add(item.id)
        return await self._prepare(item.id, item)

    def _write(self, batch: Sequence[_Prepared]) -> tuple[list[ProductRecord], dict[str, str]]:
        """Store the uploads, upsert all in one transaction (durable on return), then drop the
        uploads no product records any more. -> (records as written, id -> created/updated)."""
        with self._uploads_lock.write():
            records = [
                dataclasses.replace(p.record, image=self.images.save(p.image, p.decoded))
                if p.image is not None
                else p.record
                for p in batch
            ]
            old = {r.id: self._current_image(r.id) for r in records}
            self.index.upsert(records, np.stack([p.vector for p in batch]))
            for record in records:
                if old[record.id] not in (None, record.image):
                    self._collect_upload(old[record.id])
        status = {r.id: "created" if old[r.id] is None else "updated" for r in records}
        return records, status

    async def delete(self, product_id: str) -> DeletedPublic:
        with self.metrics.stage("write"):
            await run_in_threadpool(self._delete, product_id)  # ProductNotFound -> 404
        return DeletedPublic(id=product_id, deleted=True)

    def _delete(self, product_id: str) -> None:
        with self._uploads_lock.write():
            old = self.index.get(product_id).image
            self.index.delete([product_id])
            self._collect_upload(old)

    def _current_image(self, product_id: str) -> str | None:
        """The image a live product records ("" for none); None when there is no such product."""
        try:
            return self.index.get(product_id).image
        except ProductNotFound:
            return None

    def _collect_upload(self, recorded: str) -> None:
        """Delete a stored upload no live product records any more (call after the write
        committed, under the uploads lock: a crash before this leaves an orphan file, never a
        dangling record). Catalog images and other files outside the uploads dir are kept."""
        if recorded and not self.index.image_in_use(recorded):
            self.images.discard(recorded)

    # ---- reads --------------------------------------------------------------------------

    async def get(self, product_id: str) -> ProductPublic:
        return public(await run_in_threadpool(self.index.get, product_id))

    async def image(self, product_id: str) -> StoredImageResponse:
        return await run_in_threadpool(self._open_image, product_id)

    def _open_image(self, product_id: str) -> StoredImageResponse:
        """Look up the record and open its file together, so no write can delete it between."""
        with self._uploads_lock.read():
            response = self.images.open(self.index.get(product_id).image)
        if response is None:
            raise ApiError(404, "image_not_found", f"product {product_id!r} has no stored image")
        return response

    async def page(self, cursor: str | None, limit: int, category: str | None) -> ProductsPublic:
        """Products in insertion order after `cursor`: stable under concurrent writes (a key is
        never reused and an upsert keeps its key), so each live product is listed once."""
        after = decode_cursor(cursor)
        category = (category or "").strip() or None
        resolved = await run_in_threadpool(resolve_filter, category, {}, self.index.categories)
        if resolved.notice is not None:
            return ProductsPublic(items=[], next_cursor=None, notice=resolved.notice)
        rows = await run_in_threadpool(self.index.page, after, limit + 1, resolved.where)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][0]) if more else None
        return ProductsPublic(items=[public(r) for _, r in rows], next_cursor=next_cursor)

