"""What the search and classify routes call: one loaded bundle + index + batcher.

Routes stay thin (validate a `*Create` schema, call one method here, return its `*Public`).
Every model, FAISS, SQLite or file call runs off the event loop: model calls through the
batcher's futures, the rest in the threadpool. Product writes and reads live in
`api.catalog.Catalog` (`services.catalog`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from api.batching import BatchConfig, EmbedBatcher
from api.catalog import Catalog, image_url
from api.embed_cache import EmbedCache
from api.filters import empty_notice, resolve_filter
from api.media import ImageStore
from api.metrics import ApiMetrics
from api.requests import ClassifyCreate, SearchCreate
from api.results import answer_each
from api.schemas import (
    BatchErrorPublic,
    ClassifyPublic,
    LabelScorePublic,
    LevelPredictionPublic,
    SearchHitPublic,
    SearchPublic,
)
from api.settings import Settings
from embedder.classify import PATH_KEY
from embedder.images import ImageLimits, MemoryBudget, load_image
from embedder.visual import DEFAULT_NEIGHBOURS, near_duplicates_of
from index.errors import IndexBusy, IndexMismatchError

logger = logging.getLogger(__name__)

SEARCH_MS_SMOOTHING = 0.1  # weight of the newest search in the running mean of search time


@dataclass
class Query:
    """Decoded inputs of one request: what goes to the model."""

    image: Any | None = None  # PIL RGB image
    title: str | None = None
    pixels: np.ndarray | None = None  # the image as the backbone's (3, H, W) input
    upload: bytes | None = None  # the image as sent (the embedding cache's key)


def hits_public(hits: Sequence[Any]) -> list[SearchHitPublic]:
    """index.store.Hit list -> the response's hits."""
    return [
        SearchHitPublic(
            id=h.id,
            score=float(h.score),
            title=h.record.title,
            category=h.record.category,
            image_url=image_url(h.id, h.record.image),
        )
        for h in hits
    ]


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
        self.threshold = (
            settings.other_threshold
            if settings.other_threshold is not None
            else float(bundle.other_threshold)
        )
        self.batcher = EmbedBatcher(
            self._embed, BatchConfig.from_settings(settings), on_batch=metrics.observe_batch
        )
        self.embed_cache = EmbedCache()
        self._search_ms = 0.0  # running mean of served searches' time (Services._search)
        assert settings.uploads_dir is not None
        images = ImageStore(settings.uploads_dir, settings.media_root)
        self.catalog = Catalog(index, images, metrics, self.decode, self.index_row)

    @classmethod
    def open(cls, settings: Settings, metrics: ApiMetrics) -> Services:
        """Load the bundle, then the index built from it (a mismatched pair is refused)."""
        from embedder.bundle import Bundle
        from index.stores import open_product_index

        bundle = Bundle.load(
            settings.bundle_dir,
            image_engine=settings.image_engine,
            text_engine=settings.text_engine,
        )
        index = open_product_index(settings.index_target, expected_fingerprint=bundle.fingerprint)
        if index.d != bundle.index_dim:
            index.close()
            raise IndexMismatchError(
                f"index {settings.index_target} holds {index.d}-d vectors but bundle "
                f"{settings.bundle_dir} embeds {bundle.index_dim}-d: rebuild the index with this "
                "bundle"
            )
        # Load the backbones now, not in the first request. An ONNX session sizes its thread
        # pool from torch's thread count when it loads: the image model keeps both cores per
        # call; then torch (the towers) and the text model run each call on `torch_threads`,
        # as the batcher's two workers run calls side by side (docs/performance.md).
        bundle.backbone("image")
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        if settings.blas_threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(settings.blas_threads, user_api="blas")  # process-wide
        bundle.backbone("text")
        logger.info(
            "serving bundle %s (%s, image engine %s, text engine %s) and index %s (%d products)",
            settings.bundle_dir,
            bundle.fingerprint[:12],
            bundle.backbone("image").engine,
            bundle.backbone("text").engine,
            settings.index_target,
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

    # ---- model --------------------------------------------------------------------------

    def _decode(self, data: bytes) -> tuple[Any, np.ndarray]:
        """Decode and preprocess here, in the request's thread: the batch only runs the model."""
        image = load_image(data, self.limits, self.decode_budget)
        return image, self.bundle.preprocess([image])[0]

    async def decode(self, image: bytes | None, title: str | None) -> Query:
        """A validated request's image decoded (ImageError on a bad one) beside its title."""
        query = Query(title=title, upload=image)
        if image is not None:
            with self.metrics.stage("decode"):
                query.image, query.pixels = await run_in_threadpool(self._decode, image)
        return query

    def _embed(self, pixels: list[np.ndarray] | None, texts: list[str] | None) -> np.ndarray:
        """One model call over a batch of preprocessed images and/or titles: the HUSE embedding
        beside the image's visual block (Bundle.embed_parts)."""
        stacked = np.stack(pixels) if pixels is not None else None
        return self.bundle.embed_parts(texts=texts, pixels=stacked)

    async def embed(self, query: Query) -> np.ndarray:
        """The query's (index_dim,) parts (Bundle.embed_parts): from the LRU cache for a
        repeated title or image, else computed in a micro-batch with other requests."""
        key = self.embed_cache.key(query.title, query.upload)
        cached = self.embed_cache.get(key)
        if cached is not None:
            return cached
        with self.metrics.stage("embed"):
            future = self.batcher.submit(image=query.pixels, text=query.title)
            vec = await asyncio.wrap_future(future)
        self.embed_cache.put(key, vec)
        return vec

    async def index_row(self, query: Query) -> np.ndarray:
        """The (index_dim,) row the index stores for a product (catalog writes)."""
        parts = await self.embed(query)
        return self.bundle.served_stored(parts[None, :], query.image is not None)[0]

    async def _vector(self, request: SearchCreate | ClassifyCreate) -> tuple[np.ndarray, str]:
        """(the request's query vector, its kind): a product's stored vector or an embedding."""
        kind = request.check_inputs()
        if kind == "product":
            return await run_in_threadpool(self.index.vector, request.product_id), kind
        return await self.embed(await self.decode(request.image, request.title)), kind

    # ---- classify -----------------------------------------------------------------------

    def _rank(self, method: str, emb: np.ndarray, k: int) -> list[LevelPredictionPublic]:
        """The whole-path prediction first, then one per head."""
        ranked = self.bundle.classify_embeddings(
            emb[None, :], method=method, k=k, other_threshold=self.settings.other_threshold
        )[0]
        levels = []
        for head in [PATH_KEY, *self.bundle.heads]:
            labels = [LabelScorePublic(label=lab, score=s) for lab, s in ranked[head]["labels"]]
            other = ranked[head]["other"]  # the bundle's own flag
            answer = "other" if other else labels[0].label
            levels.append(
                LevelPredictionPublic(head=head, answer=answer, other=other, labels=labels)
            )
        return levels

    async def classify(self, request: ClassifyCreate) -> ClassifyPublic:
        emb, _ = await self._vector(request)
        emb = emb[: self.bundle.dim]  # the HUSE embedding; the visual block only ranks products
        path, *levels = await run_in_threadpool(self._rank, request.method, emb, request.k)
        return ClassifyPublic(
            method=request.method, threshold=self.threshold, path=path, levels=levels
        )

    # ---- search -------------------------------------------------------------------------

    async def search(self, request: SearchCreate) -> SearchPublic:
        """`request.visual_weight` in [0, 1] (None: the bundle's validated value) weighs the
        visual block against the universal space (embedder.visual.served_search); the rest of
        the request is applied here."""
        resolve = partial(resolve_filter, request.category, request.filters, self.index.categories)
        # only a category reads the index (SQLite); otherwise no thread hand-off on the hot path
        resolved = resolve() if request.category is None else await run_in_threadpool(resolve)
        kind = request.check_inputs()
        if resolved.notice is not None:  # nothing can match: no need to embed
            return SearchPublic(hits=[], count=0, query=kind, notice=resolved.notice)
        with self.metrics.stage("search"):
            if kind == "product":
                stored = await run_in_threadpool(self.index.vector, request.product_id)
                xq = self.bundle.served_requery(stored[None, :], request.visual_weight)
                found = await run_in_threadpool(
                    self.index.search,
                    xq,
                    request.k,
                    exclude_ids=[request.product_id],
                    where=resolved.where,
                )
                hits = found[0]
            else:
                query = await self.decode(request.image, request.title)
                parts = await self.embed(query)
                served = partial(
                    self.bundle.served_search,
                    self.index,
                    parts,
                    query.image is not None,
                    request.k,
                    request.visual_weight,
                    where=resolved.where,
                )
                hits, _ = await self._search(served, inline=resolved.where is None)
        public = hits_public(hits)
        notice = None if public else empty_notice(request.category, request.filters)
        return SearchPublic(hits=public, count=len(public), query=kind, notice=notice)

    async def _search(self, search: Callable[..., Any], inline: bool) -> Any:
        """`search(wait=...)` on the event loop when it may run there (Settings.
        inline_search_max_ms; an in-memory index, no filter) and a write does not hold the
        index, else on a thread. Its time feeds the running mean that decides."""
        if (inline and self.index.nonblocking_reads
                and self._search_ms < self.settings.inline_search_max_ms):
            start = time.perf_counter()
            try:
                out = search(wait=False)
            except IndexBusy:
                pass  # a write holds the index: wait for it on a thread
            else:
                self._note_search(start)
                return out

        def timed() -> Any:
            start = time.perf_counter()
            out = search()
            self._note_search(start)
            return out

        return await run_in_threadpool(timed)

    def _note_search(self, start: float) -> None:
        ms = (time.perf_counter() - start) * 1000.0
        self._search_ms += SEARCH_MS_SMOOTHING * (ms - self._search_ms)

    async def near_duplicates(
        self, product_id: str, threshold: float | None, k: int | None
    ) -> SearchPublic:
        """Indexed products whose photo is this product's item (visual cosine >= threshold,
        default: the bundle's validated one), best first."""
        k = k if k is not None else DEFAULT_NEIGHBOURS
        threshold = self.bundle.near_duplicate_threshold if threshold is None else threshold
        found = await run_in_threadpool(
            near_duplicates_of, self.index, product_id, self.bundle.dim,
            self.bundle.served_space, threshold, k
        )
        public = hits_public(found)
        return SearchPublic(hits=public, count=len(public), query="near-duplicates")

    # ---- batches ------------------------------------------------------------------------

    async def search_each(
        self, requests: Sequence[SearchCreate | BatchErrorPublic]
    ) -> list[SearchPublic | BatchErrorPublic]:
        return await answer_each([_run(self.search, r) for r in requests])

    async def classify_each(
        self, requests: Sequence[ClassifyCreate | BatchErrorPublic]
    ) -> list[ClassifyPublic | BatchErrorPublic]:
        return await answer_each([_run(self.classify, r) for r in requests])


async def _run(method: Any, request: Any) -> Any:
    """`method(request)`, or the request itself when it is already an error."""
    if isinstance(request, BatchErrorPublic):
        return request
    return await method(request)

