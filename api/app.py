"""create_app(settings): the FastAPI app; the model and index load once, in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.errors import RequestIdMiddleware, error_responses, install_error_handlers
from api.limits import BodyLimitMiddleware, JsonDepthMiddleware
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import classify, facets, ops, products, search, web
from api.services import Services
from api.settings import Settings

logger = logging.getLogger(__name__)

# Room in a request body for the form's text fields and multipart framing, beside the image.
FORM_OVERHEAD_BYTES = 64 * 1024


def max_request_bytes(settings: Settings) -> int:
    """Largest request body worth parsing: one image plus titles/attributes in UTF-8."""
    text = 4 * (settings.max_title_chars + settings.max_attributes_chars)
    return settings.max_upload_bytes + text + FORM_OVERHEAD_BYTES


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
        responses=error_responses(500),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    for module in (classify, search, facets, products, ops, web):
        app.include_router(module.router)
    app.mount("/static", web.static_files, name="static")
    install_error_handlers(app)
    # Outermost last: the request id exists before anything can fail; sizes before JSON depth.
    app.add_middleware(JsonDepthMiddleware, max_depth=settings.max_json_depth)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    return app
