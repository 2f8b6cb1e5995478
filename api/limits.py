"""Request-size limits applied while the body streams in, before anything is parsed or spooled."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses a request body over `max_bytes` (or its path's entry in `path_limits`) with 413:
    from Content-Length when the client sends one, else by counting chunks as they arrive
    (chunked uploads), so a 1 GB upload is never read into memory or onto disk."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        limits = {"": max_bytes, **(path_limits or {})}
        if min(limits.values()) <= 0:
            raise ValueError(f"body limits must be positive, got {limits}")
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)

        def refuse(size: str) -> object:
            return error_response(
                413,
                "too_many_bytes",
                f"request body of {size} bytes exceeds the limit of {max_bytes}",
            )
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > max_bytes
            except ValueError:
                await error_response(400, "bad_request", "invalid Content-Length")(
                    scope, receive, send
                )
                return
            if too_large:
                await refuse(declared.decode())(scope, receive, send)
                return
        received = 0
        overflow = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    overflow = True
                    raise _TooLarge
            return message

        async def replacing_send(message: Message) -> None:
            # The body parser turns _TooLarge into its own 400; answer 413 in its place.
            nonlocal replaced
            if not overflow:
                await send(message)
            elif not replaced:
                replaced = True
                await refuse(f"more than {max_bytes}")(scope, receive, send)

        try:
            await self.app(scope, limited_receive, replacing_send)
        except _TooLarge:
            await replacing_send({"type": "http.response.start", "status": 413, "headers": []})
