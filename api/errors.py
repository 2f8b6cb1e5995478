"""One place that turns errors into JSON responses `{"error", "detail", "request_id"}`.

Only genuine client mistakes (bad image, bad argument, unknown product, wrong key, too large)
are 4xx, and the service raises those on purpose (`ApiError`, `InvalidInput`, `ImageError`,
`ProductNotFound`, `CatalogError`). A broken bundle or index is 503. Anything else - a
`ValueError` or `TypeError` from inside the service included - is a bug: a 500 whose body
carries the request id, logged with its traceback under the same id. No error stops the server.

The request id comes from a valid incoming `X-Request-ID` header or is generated, is kept on
`request.state.request_id`, and is echoed in the `X-Request-ID` response header.
"""

from __future__ import annotations

import logging
import re
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedder.errors import CatalogError, HuseError, ImageError
from index.errors import IndexStoreError, ProductNotFound

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is echoed only when it is short and plain (no log or header injection).
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
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


class InvalidInput(ApiError):
    """A request argument the service refuses (422); raised on purpose, unlike a ValueError."""

    def __init__(self, detail: str, code: str = "invalid_input") -> None:
        super().__init__(422, code, detail)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str:
    """The id RequestIdMiddleware gave this request (a fresh one outside the middleware)."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = new_request_id()
    return state["request_id"]


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: dict | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    request_id = request_id or new_request_id()
    body = {"error": code, "detail": detail, "request_id": request_id}
    # Set here too: a 500 is sent by Starlette's outermost middleware, past RequestIdMiddleware.
    headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    return JSONResponse(body, status_code=status, headers=headers)


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
    if isinstance(exc, (HuseError, IndexStoreError)):
        return 503, "unavailable", f"{type(exc).__name__}: {exc}"
    return 500, "internal", "internal error; the server log has its traceback under this id"


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    status, code, detail = classify_exception(exc)
    request_id = request_id_of(request.scope)
    if status >= 500:
        logger.error(
            "request %s: %s %s failed with %d",
            request_id,
            request.method,
            request.url.path,
            status,
            exc_info=exc,
        )
    headers = exc.headers if isinstance(exc, ApiError) else None
    return error_response(status, code, detail, headers, request_id)


def validation_detail(exc: RequestValidationError) -> str:
    """'field: message; ...' for each invalid field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(
        422, "invalid_request", validation_detail(exc), request_id=request_id_of(request.scope)
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (not only the first partial match's):
    each standard method is tried against every route, included routers too."""
    return [
        method
        for method in _HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


async def _handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = "http_error"
    headers = dict(getattr(exc, "headers", None) or {})
    methods = allowed_methods(request) if exc.status_code == 405 else None
    if methods:
        headers["Allow"] = ", ".join(methods)
    return error_response(
        exc.status_code, code, str(exc.detail), headers or None, request_id_of(request.scope)
    )


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (ApiError, HuseError, IndexStoreError, Exception):
        app.add_exception_handler(exc_type, _handle)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)


class RequestIdMiddleware:
    """Gives every HTTP request an id (the client's valid X-Request-ID, else a fresh uuid4 hex),
    stores it on `request.state.request_id` and echoes it as the X-Request-ID response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"")
        text = incoming.decode("latin-1")
        request_id = text if REQUEST_ID_PATTERN.fullmatch(text) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
