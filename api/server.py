"""Running the app under uvicorn with connection bounds from `Settings`.

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


class ReadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request to arrive whole."""

    read_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None:
            self._arm()
        super().data_received(data)
        if self.conn.their_state in _REQUEST_IN:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.conn.their_state in _REQUEST_IN or self.transport.is_closing():
            return
        logger.info(
            "closing connection from %s: request not received within %.1f s",
            self.client,
            self.read_timeout_s,
        )
        self.transport.close()


def uvicorn_config(app: Any, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    """uvicorn.Config for `app` with the read timeout and connection cap of `settings`."""
    protocol = type(
        "ReadTimeoutProtocol",
        (ReadTimeoutProtocol,),
        {"read_timeout_s": settings.request_read_timeout_s},
    )
    return uvicorn.Config(app, http=protocol, limit_concurrency=settings.max_connections, **kwargs)

