"""Phase timing for the training wing: log (and optionally record) how long each phase took."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


@contextmanager
def timed(what: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log (and record in `timings`, rounded to 10 ms) the seconds a phase took."""
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    logger.info("%s: %.1f s", what, dt)
    if timings is not None:
        timings[what] = round(dt, 2)
