"""Request-size limits applied while the body streams in, before anything is parsed or spooled."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response, request_id_of


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
                request_id=request_id_of(scope),
            )

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > max_bytes
            except ValueError:
                await error_response(
                    400, "bad_request", "invalid Content-Length", request_id=request_id_of(scope)
                )(scope, receive, send)
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


_QUOTE = ord('"')
_SCAN_CHUNK = 1 << 20  # bytes scanned at once (~40 MB of temporaries)
_OPENERS = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSERS = np.frombuffer(b"]}", dtype=np.uint8)


def json_depth(data: bytes | str) -> int:
    """Deepest nesting of arrays/objects in a JSON text, without parsing (or recursing into) it.

    Linear time and bounded memory on any input: escapes are dropped (a backslash only occurs
    inside strings), then brackets count only where an even number of quotes precede them,
    a chunk at a time. On malformed text the result still bounds what a parser would recurse
    into before failing.
    """
    raw = data.encode() if isinstance(data, str) else data
    raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = deepest = 0
    inside = 0  # 1 while the previous chunk ended inside a string
    for start in range(0, len(raw), _SCAN_CHUNK):
        codes = np.frombuffer(raw, np.uint8, min(_SCAN_CHUNK, len(raw) - start), start)
        quotes = np.cumsum(codes == _QUOTE, dtype=np.int64) + inside
        steps = np.isin(codes, _OPENERS).astype(np.int64) - np.isin(codes, _CLOSERS)
        running = depth + np.cumsum(steps * (quotes % 2 == 0))
        deepest, depth, inside = max(deepest, int(running.max())), int(running[-1]), quotes[-1] % 2
    return deepest


def loads_limited(text: str, max_depth: int) -> Any:
    """json.loads that refuses nesting over `max_depth` and NaN/Infinity (not JSON) with
    ValueError, before the parser could recurse or store a value JSON cannot carry."""
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} deep, limit {max_depth}")

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON value")

    return json.loads(text, parse_constant=refuse)


class JsonDepthMiddleware:
    """Refuses (422) a JSON request body nested deeper than `max_depth` before any parser sees
    it; the body's size is already bounded by BodyLimitMiddleware, which runs first."""

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be positive, got {max_depth}")
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        media = content_type.split(b";", 1)[0].strip().lower()
        is_json = media == b"application/json" or media.endswith(b"+json")
        if scope["type"] != "http" or not is_json:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        depth = json_depth(bytes(body))
        if depth > self.max_depth:
            await error_response(
                422,
                "invalid_request",
                f"JSON body nested {depth} deep, limit {self.max_depth}",
                request_id=request_id_of(scope),
            )(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
