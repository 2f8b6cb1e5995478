"""Domain errors of the index package; the API maps each of them to one 4xx status."""

from __future__ import annotations


class IndexStoreError(Exception):
    """Base class for every error the index package raises about its stored state."""


class IndexMismatchError(IndexStoreError):
    """The files belong to another model bundle, dimension or format (refuse, never guess)."""


class CorruptIndexError(IndexStoreError):
    """A file is truncated, fails its checksum or cannot be parsed."""


class ProductNotFound(IndexStoreError, KeyError):
    """No live product has this id; carries the id so callers can report it."""

    def __init__(self, product_id: object) -> None:
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"product not found: {self.product_id!r}"


class IndexBusy(Exception):
    """A write holds the index, or waits for it, and the reader asked not to wait (`wait=False`:
    the API's event loop, which must never block). Not a client error: the caller retries on a
    thread."""
