"""Answers of batch calls: each item succeeds or fails on its own, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from api.errors import classify_exception
from api.schemas import BatchErrorPublic

T = TypeVar("T")


def batch_error(exc: BaseException) -> BatchErrorPublic:
    """A client mistake as one result of a batch; a server failure fails the whole call."""
    if not isinstance(exc, Exception):
        raise exc
    status, code, detail = classify_exception(exc)
    if status >= 500:
        raise exc
    return BatchErrorPublic(error=code, detail=detail)


async def answer_each(jobs: Sequence[Awaitable[T]]) -> list[T | BatchErrorPublic]:
    """Run the jobs together (their model calls share micro-batches); results in order."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    return [batch_error(r) if isinstance(r, BaseException) else r for r in results]
