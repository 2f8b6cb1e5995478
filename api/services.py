"""What the routes call: one loaded bundle + index + batcher and the operations over them.

Routes stay thin (parse the form, call one method here, return its `*Public` schema). Every
model, FAISS, SQLite or file call runs off the event loop: model calls through the batcher's
futures, the rest in the threadpool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import quote

import numpy as np
from starlette.concurrency import run_in_threadpool

from api.batching import BatchConfig, EmbedBatcher
from api.errors import ApiError, InvalidInput
from api.limits import loads_limited
from api.media import ImageStore, StoredImageResponse
from api.metrics import ApiMetrics
from api.schemas import (
    ClassifyPublic,
    DeletedPublic,
    HealthPublic,
    LabelScorePublic,
    LevelPredictionPublic,
    ProductPublic,
    SearchHitPublic,
    SearchPublic,
)
from api.settings import Settings
from embedder.classify import METHODS, PATH_KEY
from embedder.images import ImageLimits, MemoryBudget, load_image
from index.errors import IndexMismatchError
from index.rwlock import RWLock

logger = logging.getLogger(__name__)

_VERSIONED = ("huse-search", "fastapi", "torch", "transformers", "faiss-cpu", "numpy", "pillow")


@dataclass
class Query:
    """Decoded, validated inputs of one classify/search request."""

    image: Any | None = None  # PIL RGB image
    title: str | None = None
    pixels: np.ndarray | None = None  # the image as the backbone's (3, H, W) input

    @property
    def kind(self) -> str:
        if self.image is not None and self.title is not None:
            return "fused"
        return "image" if self.image is not None else "text"


def image_url(product_id: str, recorded_image: str) -> str | None:
    return f"/v1/products/{quote(product_id, safe='')}/image" if recorded_image else None


def attribute_values(parsed: dict[str, Any]) -> dict[str, str]:
    """Attribute values as text: a string as it is, any other JSON value as its JSON text
    (`{"b": [1, 2]}`, never Python's repr `{'b': [1, 2]}`)."""
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in parsed.items()
    }


class Services:
    """The loaded model and index, shared by every request of one app."""

    def __init__(self, settings: Settings, bundle: Any, index: Any, metrics: ApiMetrics) -> None:
        self.settings = settings
        self.bundle = bundle
        self.index = index
        self.metrics = metrics
        self.limits = ImageLimits(
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            min_side=settings.min_image_side,
            max_work_bytes=settings.max_decode_bytes,
        )
        # Concurrent decodes share this many bytes of working memory (see embedder.images).
        self.decode_budget = MemoryBudget(settings.decode_budget_bytes)
        assert settings.uploads_dir is not None
        self.images = ImageStore(settings.uploads_dir, settings.media_root)
        # Written from storing an upload through the index write, and from a write through
        # deleting the uploads it left unreferenced, so no upload is deleted while a write still
        # needs it; read while an image GET looks up its record and opens the file.
        self._uploads_lock = RWLock()
        self.threshold = (
            settings.other_threshold
            if settings.other_threshold is not None
            else float(bundle.other_threshold)
        )
        self.batcher = EmbedBatcher(
            self._embed,
            BatchConfig(
                enabled=settings.batching,
                max_batch=settings.batch_max_size,
                max_wait_ms=settings.batch_max_wait_ms,
                workers=settings.batch_workers,
                unbatched_workers=settings.unbatched_workers,
                image_max=settings.image_batch_max,
            ),
            on_batch=metrics.observe_batch,
        )

    @classmethod
    def open(cls, settings: Settings, metrics: ApiMetrics) -> Services:
        """Load the bundle, then the index built from it (a mismatched pair is refused)."""
        from embedder.bundle import Bundle
        from index.store import ProductIndex

        bundle = Bundle.load(settings.bundle_dir, image_engine=settings.image_engine)
        index = ProductIndex.open(settings.index_dir, expected_fingerprint=bundle.fingerprint)
        if index.d != bundle.dim:
            index.close()
            raise IndexMismatchError(
                f"index {settings.index_dir} holds {index.d}-d vectors but bundle "
                f"{settings.bundle_dir} embeds {bundle.dim}-d: rebuild the index with this bundle"
            )
        for kind in ("image", "text"):  # load backbones now, not in the first request
            bundle.backbone(kind)
        logger.info(
            "serving bundle %s (%s, image engine %s) and index %s (%d products)",
            settings.bundle_dir,
            bundle.fingerprint[:12],
            bundle.backbone("image").engine,
            settings.index_dir,
            len(index),
        )
        return cls(settings, bundle, index, metrics)

    def close(self) -> None:
        """Stop the batcher, snapshot the index (writes are already durable in SQLite), close."""
        self.batcher.close()
        try:
            self.index.save()
        finally:
            self.index.close()

    # ---- inputs -------------------------------------------------------------------------

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.settings.max_k:
            raise InvalidInput(f"k must be in [1, {self.settings.max_k}], got {k}")
        return k

    def check_title(self, title: str | None) -> str | None:
        if title is None:
            return None
        title = title.strip()
        if len(title) > self.settings.max_title_chars:
            raise InvalidInput(
                f"title has {len(title)} characters, limit {self.settings.max_title_chars}"
            )
        return title or None

    def _decode(self, data: bytes) -> tuple[Any, np.ndarray]:
        """Decode and preprocess here, in the request's thread: the batch only runs the model."""
        image = load_image(data, self.limits, self.decode_budget)
        return image, self.bundle.backbone("image").preprocess_batch([image])[0]

    async def parse_query(self, image_bytes: bytes | None, title: str | None) -> Query:
        query = Query(title=self.check_title(title))
        if image_bytes is not None:
            with self.metrics.stage("decode"):
                query.image, query.pixels = await run_in_threadpool(self._decode, image_bytes)
        if query.image is None and query.title is None:
            raise ApiError(422, "empty_request", "send an image, a title, or both")
        return query

    # ---- model --------------------------------------------------------------------------

    def _embed(self, pixels: list[np.ndarray] | None, texts: list[str] | None) -> np.ndarray:
        """One model call over a batch of preprocessed images and/or titles."""
        stacked = np.stack(pixels) if pixels is not None else None
        return self.bundle.embed(texts=texts, pixels=stacked)

    async def embed(self, query: Query) -> np.ndarray:
        """The query's (d,) embedding, computed in a micro-batch with other requests."""
        with self.metrics.stage("embed"):
            future = self.batcher.submit(image=query.pixels, text=query.title)
            return await asyncio.wrap_future(future)

    def _rank(self, method: str, emb: np.ndarray, k: int) -> list[LevelPredictionPublic]:
        """The whole-path prediction first, then one per head."""
        ranked = self.bundle.classify_embeddings(emb[None, :], method=method, k=k)[0]
        levels = []
        for head in [PATH_KEY, *self.bundle.heads]:
            labels = [LabelScorePublic(label=lab, score=s) for lab, s in ranked[head]["labels"]]
            other = labels[0].score < self.threshold  # the settings may override the bundle's
            answer = "other" if other else labels[0].label
            levels.append(
                LevelPredictionPublic(head=head, answer=answer, other=other, labels=labels)
            )
        return levels

    async def classify(
        self, image_bytes: bytes | None, title: str | None, k: int, method: str
    ) -> ClassifyPublic:
        if method not in METHODS:
            raise InvalidInput(f"method must be one of {METHODS}, got {method!r}")
        k = self.check_k(k)
        emb = await self.embed(await self.parse_query(image_bytes, title))
        path, *levels = await run_in_threadpool(self._rank, method, emb, k)
        return ClassifyPublic(method=method, threshold=self.threshold, path=path, levels=levels)

    # ---- search -------------------------------------------------------------------------

    async def search(
        self,
        image_bytes: bytes | None,
        title: str | None,
        product_id: str | None,
        k: int,
        category: str | None,
    ) -> SearchPublic:
        k = self.check_k(k)
        category = (category or "").strip() or None
        if product_id:
            if image_bytes is not None or self.check_title(title):
                raise InvalidInput("send either product_id or an image/title, not both")
            xq = await run_in_threadpool(self.index.vector, product_id)
            exclude, kind = [product_id], "product"
        else:
            query = await self.parse_query(image_bytes, title)
            xq, exclude, kind = await self.embed(query), None, query.kind
        with self.metrics.stage("search"):
            hits = await run_in_threadpool(
                self.index.search,
                np.asarray(xq, dtype=np.float32)[None, :],
                k,
                category_prefix=category,
                exclude_ids=exclude,
            )
        public = [
            SearchHitPublic(
                id=h.id,
                score=float(h.score),
                title=h.record.title,
                category=h.record.category,
                image_url=image_url(h.id, h.record.image),
            )
            for h in hits[0]
        ]
        return SearchPublic(hits=public, count=len(public), query=kind)

    # ---- products -----------------------------------------------------------------------

    @staticmethod
    def _public(record: Any) -> ProductPublic:
        return ProductPublic(
            id=record.id,
            title=record.title,
            category=record.category,
            attributes=dict(record.attributes or {}),
            image_url=image_url(record.id, record.image),
        )

    def _parse_attributes(self, attributes: str | None) -> dict[str, str]:
        if not attributes:
            return {}
        if len(attributes) > self.settings.max_attributes_chars:
            raise InvalidInput(
                f"attributes have {len(attributes)} characters, "
                f"limit {self.settings.max_attributes_chars}"
            )
        try:
            parsed = loads_limited(attributes, self.settings.max_json_depth)
        except ValueError as e:  # JSONDecodeError, too deep, NaN/Infinity
            raise InvalidInput(f"attributes must be a JSON object: {e}") from e
        if not isinstance(parsed, dict):
            raise InvalidInput(f"attributes must be a JSON object, got {type(parsed).__name__}")
        return attribute_values(parsed)

    async def put_product(
        self,
        product_id: str,
        image_bytes: bytes | None,
        title: str,
        category: str,
        attributes: str | None,
    ) -> ProductPublic:
        """Embed the product and upsert it; durable (SQLite commit) when this returns."""
        from index.store import ProductRecord

        category = " > ".join(p.strip() for p in category.split(">") if p.strip())
        if not category:
            raise InvalidInput("category must name at least one level, e.g. 'Footwear > Shoes'")
        attrs = self._parse_attributes(attributes)
        query = await self.parse_query(image_bytes, title)
        if query.title is None:
            raise InvalidInput("title must not be empty")
        emb = await self.embed(query)
        record = ProductRecord(
            id=product_id, title=query.title, category=category, image="", attributes=attrs
        )
        xb = np.asarray(emb, dtype=np.float32)[None, :]
        with self.metrics.stage("write"):
            record = await run_in_threadpool(
                self._write_product, record, xb, image_bytes, query.image
            )
        return self._public(record)

    def _write_product(
        self, record: Any, xb: np.ndarray, image_bytes: bytes | None, decoded: Any
    ) -> Any:
        """Store the upload, upsert (durable on return), then drop the replaced upload if unused."""
        with self._uploads_lock.write():
            if image_bytes is not None:
                record = dataclasses.replace(record, image=self.images.save(image_bytes, decoded))
            old = self._current_image(record.id)
            self.index.upsert([record], xb)  # takes the index's lock
            if old != record.image:
                self._collect_upload(old)
        return record

    async def delete_product(self, product_id: str) -> DeletedPublic:
        with self.metrics.stage("write"):
            await run_in_threadpool(self._delete_product, product_id)  # ProductNotFound -> 404
        return DeletedPublic(id=product_id, deleted=True)

    def _delete_product(self, product_id: str) -> None:
        with self._uploads_lock.write():
            old = self.index.get(product_id).image
            self.index.delete([product_id])
            self._collect_upload(old)

    def _current_image(self, product_id: str) -> str:
        from index.errors import ProductNotFound

        try:
            return self.index.get(product_id).image
        except ProductNotFound:
            return ""

    def _collect_upload(self, recorded: str) -> None:
        """Delete a stored upload no live product records any more (call after the write
        committed, under the uploads lock: a crash before this leaves an orphan file, never a
        dangling record). Catalog images and other files outside the uploads dir are kept."""
        if recorded and not self.index.image_in_use(recorded):
            self.images.discard(recorded)

    async def get_product(self, product_id: str) -> ProductPublic:
        return self._public(await run_in_threadpool(self.index.get, product_id))

    async def product_image(self, product_id: str) -> StoredImageResponse:
        return await run_in_threadpool(self._open_image, product_id)

    def _open_image(self, product_id: str) -> StoredImageResponse:
        """Look up the record and open its file together, so no write can delete it between."""
        with self._uploads_lock.read():
            response = self.images.open(self.index.get(product_id).image)
        if response is None:
            raise ApiError(404, "image_not_found", f"product {product_id!r} has no stored image")
        return response

    # ---- health -------------------------------------------------------------------------

    def health(self) -> HealthPublic:
        versions = {"python": platform.python_version()}
        for name in _VERSIONED:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        config = self.bundle.config
        return HealthPublic(
            status="ok",
            model={
                "bundle_dir": str(self.settings.bundle_dir),
                "fingerprint": self.bundle.fingerprint,
                "dim": int(self.bundle.dim),
                "heads": list(self.bundle.heads),
                "image_backbone": config.image_backbone.spec,
                "image_engine": self.bundle.backbone("image").engine,
                "text_backbone": config.text_backbone.spec,
                "other_threshold": self.threshold,
            },
            index={"index_dir": str(self.settings.index_dir), "size": len(self.index)},
            batching={
                "enabled": self.settings.batching,
                "max_batch": self.settings.batch_max_size,
                "max_wait_ms": self.settings.batch_max_wait_ms,
                "image_max": self.settings.image_batch_max,
            },
            versions=versions,
        )
