"""Request-size limits applied while the body streams in, before anything is parsed or spooled."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses a request body over `max_bytes` with 413: from Content-Length when the client
    sends one, else by counting chunks as they arrive (chunked uploads), so a 1 GB upload is
    never read into memory or onto disk."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    def _refuse(self, size: str) -> object:
        return error_response(
            413,
            "too_many_bytes",
            f"request body of {size} bytes exceeds the limit of {self.max_bytes}",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await error_response(400, "bad_request", "invalid Content-Length")(
                    scope, receive, send
                )
                return
            if too_large:
                await self._refuse(declared.decode())(scope, receive, send)
                return
        received = 0
        overflow = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
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
                await self._refuse(f"more than {self.max_bytes}")(scope, receive, send)

        try:
            await self.app(scope, limited_receive, replacing_send)
        except _TooLarge:
            await replacing_send({"type": "http.response.start", "status": 413, "headers": []})
