"""Prometheus metrics with one registry per app, so several apps in one process never collide."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Latency buckets in seconds: 1 ms .. 10 s, dense where the model calls land.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Label values come from fixed sets, so no client can grow the registry: methods outside
# METHODS count as OTHER, paths no route matches as UNMATCHED, statuses are HTTP's own 3 digits.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER = "other"
UNMATCHED = "<unmatched>"


class ApiMetrics:
    """Request counts and latency per route, time per stage (decode/embed/search/write)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "huse_http_requests",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "huse_http_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "huse_stage_seconds",
            "Time per processing stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "huse_embed_batch_size",
            "Items per model call",
            ["kind"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages.labels(stage=name).observe(time.perf_counter() - t0)

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        """Callback for the batcher: one model call of `size` items took `seconds`."""
        self.batch_size.labels(kind=kind).observe(size)
        self.stages.labels(stage="embed_batch").observe(seconds)

    def render(self) -> bytes:
        return _generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (e.g. /v1/products/{id})."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            method = method if method in METHODS else OTHER
            self.metrics.latency.labels(route=path, method=method).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(route=path, method=method, status=str(status)).inc()
