"""A readers-writer lock: searches run together, writes run alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from index.errors import IndexBusy


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self, wait: bool = True) -> Iterator[None]:
        """Shared access; `wait=False` raises IndexBusy instead of waiting for a writer."""
        with self._cond:
            while self._writer or self._waiting_writers:
                if not wait:
                    raise IndexBusy("a write holds or waits for the index")
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
