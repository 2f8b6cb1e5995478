"""Running the app under uvicorn with connection bounds from `Settings`.

The HTTP parser is httptools (C) where installed, else h11 (pure Python): under 32 clients the
HTTP stack was the largest cost after the model (docs/performance.md).

uvicorn closes idle keep-alive connections but never times out a request that is still
arriving: a client that sends half a header holds its connection forever. `ReadTimeoutProtocol`
gives every request `request_read_timeout_s` to arrive whole (headers and body) from its first
byte (or from the connection's opening), then closes the connection. `max_connections` caps the
connections and requests served at once (uvicorn answers 503 beyond it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.settings import Settings

logger = logging.getLogger(__name__)

# h11 states in which the client has sent all it will send for the current request.
_REQUEST_IN = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


class _ReadDeadline:
    """Each request gets `read_timeout_s` to arrive whole, from its first byte (or from the
    connection's opening); then the connection is closed. Mixed into uvicorn's protocols,
    which say through `_request_in` whether the current request has arrived whole."""

    read_timeout_s: float = 30.0
    _read_deadline: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: Any

    def _request_in(self) -> bool:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None:
            self._arm()
        super().data_received(data)  # type: ignore[misc]
        if self._request_in():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self._request_in() or self.transport.is_closing():
            return
        logger.info(
            "closing connection from %s: request not received within %.1f s",
            self.client,
            self.read_timeout_s,
        )
        self.transport.close()


class ReadTimeoutProtocol(_ReadDeadline, H11Protocol):
    """uvicorn's h11 protocol (pure Python) with a deadline for each request to arrive whole."""

    def _request_in(self) -> bool:
        return self.conn.their_state in _REQUEST_IN


def _httptools_protocol() -> type | None:
    """uvicorn's httptools protocol (a C parser: less CPU per request than h11) with the read
    deadline, or None where httptools is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HttpToolsReadTimeoutProtocol(_ReadDeadline, HttpToolsProtocol):
        _whole = False  # the current request has arrived (set by the parser's callbacks)

        def on_message_begin(self) -> None:
            self._whole = False
            super().on_message_begin()

        def on_message_complete(self) -> None:
            self._whole = True
            super().on_message_complete()

        def _request_in(self) -> bool:
            return self._whole

    return HttpToolsReadTimeoutProtocol


def uvicorn_config(app: Any, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    """uvicorn.Config for `app` with the read timeout and connection cap of `settings`."""
    base = None if settings.http_parser == "h11" else _httptools_protocol()
    if base is None and settings.http_parser == "httptools":
        raise RuntimeError("http_parser 'httptools' needs the httptools package")
    base = base or ReadTimeoutProtocol
    protocol = type(base.__name__, (base,), {"read_timeout_s": settings.request_read_timeout_s})
    return uvicorn.Config(
        app,
        http=protocol,
        loop=settings.event_loop,
        limit_concurrency=settings.max_connections,
        **kwargs,
    )

