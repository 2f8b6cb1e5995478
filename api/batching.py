"""Micro-batching of embedding calls across concurrent requests.

Each worker thread (`workers`, default 2) takes the first waiting request, gathers more for up
to `max_wait_ms`, `max_batch` items or `image_max` image/fused items, and runs one
`embed(images, texts)` call per input kind (image, text, fused), resolving each request's future
with its row. Two workers let one batch gather while the other runs. On a CPU a convolutional
backbone costs about as much per image at batch 32 as at batch 8, so image batches are capped (a
big one only adds latency to everyone in it) and the service hands in images already
preprocessed on the request's thread, leaving only the model here. Async routes await the
future with `asyncio.wrap_future`, so the event loop never blocks on the model. With batching
off, each request runs its own model call in a small thread pool: the benchmark's baseline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list[Any] | None, list[str] | None], np.ndarray]
# Default cap on image (and fused) requests per model call: 4 beat 8 and 32 at 8 and 32
# clients (bench/results/bench_api_image_max{4,8,32}.json, 2-core CPU, torch engine).
IMAGE_BATCH_MAX = 4


@dataclass(frozen=True)
class BatchConfig:
    enabled: bool = True
    max_batch: int = 32  # most requests in one model call
    max_wait_ms: float = 3.0  # how long the first request waits for company
    workers: int = 2  # batch-forming threads, each running its own model calls
    unbatched_workers: int = 8  # threads running one model call each when batching is off
    image_max: int = IMAGE_BATCH_MAX  # most image/fused requests in one batch

    def __post_init__(self) -> None:
        if (
            self.max_batch < 1
            or self.image_max < 1
            or self.max_wait_ms < 0
            or self.workers < 1
            or self.unbatched_workers < 1
        ):
            raise ValueError(
                f"bad BatchConfig: max_batch={self.max_batch}, max_wait_ms={self.max_wait_ms}, "
                f"workers={self.workers}, unbatched_workers={self.unbatched_workers}, "
                f"image_max={self.image_max}"
            )

    @classmethod
    def from_settings(cls, settings: Any) -> BatchConfig:
        """From the service's `Settings` (its `batch_*` fields)."""
        return cls(
            enabled=settings.batching,
            max_batch=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            workers=settings.batch_workers,
            unbatched_workers=settings.unbatched_workers,
            image_max=settings.image_batch_max,
        )


@dataclass
class _Request:
    image: Any | None
    text: str | None
    future: Future = field(default_factory=Future)

    @property
    def kind(self) -> str:
        if self.image is not None and self.text is not None:
            return "fused"
        return "image" if self.image is not None else "text"


_STOP = object()


class EmbedBatcher:
    """Runs `embed_fn(images, texts) -> (n, d)` for single requests, batched across callers."""

    def __init__(
        self,
        embed_fn: EmbedFn,
        config: BatchConfig | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.config = config or BatchConfig()
        self._embed_fn = embed_fn
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._workers: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        if self.config.enabled:
            for i in range(self.config.workers):
                worker = threading.Thread(target=self._run, name=f"embed-batcher-{i}", daemon=True)
                worker.start()
                self._workers.append(worker)
        else:
            self._pool = ThreadPoolExecutor(
                max_workers=self.config.unbatched_workers, thread_name_prefix="embed"
            )

    def submit(self, image: Any | None = None, text: str | None = None) -> Future:
        """Queue one item (image, text or both); the future resolves to its (d,) vector."""
        if image is None and text is None:
            raise ValueError("submit needs an image, a text or both; got neither")
        if self._closed:
            raise RuntimeError("EmbedBatcher is closed")
        request = _Request(image, text)
        if self._pool is not None:
            self._pool.submit(self._run_group, request.kind, [request])
        else:
            self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Finish queued work, then stop the worker (or pool)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put(_STOP)
        for worker in self._workers:
            worker.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            n_images = int(first.kind != "text")
            deadline = time.monotonic() + self.config.max_wait_ms / 1000.0
            while len(batch) < self.config.max_batch and n_images < self.config.image_max:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                n_images += item.kind != "text"
            groups: dict[str, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.kind, []).append(request)
            for kind, requests in groups.items():
                self._run_group(kind, requests)

    def _run_group(self, kind: str, requests: list[_Request]) -> None:
        images = [r.image for r in requests] if kind in ("image", "fused") else None
        texts = [r.text for r in requests] if kind in ("text", "fused") else None
        t0 = time.perf_counter()
        try:
            emb = self._embed_fn(images, texts)
        except Exception as exc:  # each waiting request gets the error, the worker lives on
            logger.exception("embed of a %s batch of %d failed", kind, len(requests))
            for r in requests:
                r.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(kind, len(requests), time.perf_counter() - t0)
        for i, r in enumerate(requests):
            r.future.set_result(emb[i])
