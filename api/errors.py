"""One place that turns errors into JSON responses `{"error": code, "detail": reason}`.

Client mistakes (bad image, bad argument, unknown product, wrong key, too large) are 4xx with
a reason; a broken bundle or index on the server side is 503; nothing reaches the client as a
bare 500 page, and no error stops the server.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedder.errors import CatalogError, HuseError, ImageError
from index.errors import IndexStoreError, ProductNotFound

logger = logging.getLogger(__name__)

# ImageError reasons that mean "too big" rather than "not a usable image".
_TOO_LARGE_REASONS = {"too_many_bytes", "too_many_pixels"}


class ApiError(Exception):
    """An error the API itself raises (auth, empty request, size limit) with its HTTP status."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def error_response(
    status: int, code: str, detail: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def classify_exception(exc: Exception) -> tuple[int, str, str]:
    """Map an exception to (status, code, detail)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.detail
    if isinstance(exc, ImageError):
        reason = getattr(exc, "reason", "invalid_image")
        status = 413 if reason in _TOO_LARGE_REASONS else 422
        return status, reason, str(exc)
    if isinstance(exc, ProductNotFound):
        return 404, "product_not_found", str(exc)
    if isinstance(exc, CatalogError):
        return 422, "invalid_product", str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return 422, "invalid_input", str(exc)
    if isinstance(exc, (HuseError, IndexStoreError)):
        return 503, "unavailable", f"{type(exc).__name__}: {exc}"
    return 500, "internal", "internal error"


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    status, code, detail = classify_exception(exc)
    if status >= 500:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    headers = exc.headers if isinstance(exc, ApiError) else None
    return error_response(status, code, detail, headers)


def validation_detail(exc: RequestValidationError) -> str:
    """'field: message; ...' for each invalid field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_request", validation_detail(exc))


async def _handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = "http_error"
    return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (ApiError, HuseError, IndexStoreError, ValueError, TypeError, Exception):
        app.add_exception_handler(exc_type, _handle)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
