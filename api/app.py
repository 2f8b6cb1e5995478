"""create_app(settings): the FastAPI app; the model and index load once, in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from api.errors import RequestIdMiddleware, install_error_handlers
from api.limits import BodyLimitMiddleware, JsonDepthMiddleware
from api.metrics import ApiMetrics, MetricsMiddleware
from api.openapi import install_openapi
from api.routes import classify, docs, facets, near_duplicates, ops, products, search, web
from api.services import Services
from api.settings import Settings
from huse_common.limits import MAX_ATTRIBUTES_CHARS, MAX_TITLE_CHARS

logger = logging.getLogger(__name__)

# Room in a request body for the form's text fields and multipart framing, beside the image.
FORM_OVERHEAD_BYTES = 64 * 1024


def max_request_bytes(settings: Settings) -> int:
    """Largest request body worth parsing: one image (as base64 in JSON) plus title and
    attributes in UTF-8."""
    text = 4 * (MAX_TITLE_CHARS + MAX_ATTRIBUTES_CHARS)
    return 4 * -(-settings.max_upload_bytes // 3) + text + FORM_OVERHEAD_BYTES


# Routes whose bodies carry many queries or products (settings.max_batch_body_bytes).
BATCH_PATHS = ("/v1/search:batch", "/v1/classify:batch", "/v1/products:bulk")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await run_in_threadpool(Services.open, settings, metrics)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.services.close)

    app = FastAPI(
        title="HUSE search",
        summary="Classify products and find similar ones from an image and/or a title.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by api.routes.docs from packaged assets, no CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    for module in (classify, search, facets, products, near_duplicates, ops, web, docs):
        app.include_router(module.router)
    app.mount("/static", web.static_files, name="static")
    app.mount(docs.ASSETS_URL, docs.assets(), name="docs-assets")
    install_openapi(app)
    install_error_handlers(app)
    app.add_middleware(JsonDepthMiddleware, max_depth=settings.max_json_depth)  # after sizes
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_request_bytes(settings),
        path_limits={path: settings.max_batch_body_bytes for path in BATCH_PATHS},
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(  # preflights and every answer, errors included
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
    )
    app.add_middleware(RequestIdMiddleware)  # around everything: an id exists before failures
    return app
