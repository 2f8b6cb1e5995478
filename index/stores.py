"""One entry point for either store: a FAISS index directory or a Milvus URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from index.milvus_store import MilvusProductIndex
from index.milvus_target import is_milvus_uri
from index.store import ProductIndex


def open_product_index(
    target: str | Path, expected_fingerprint: str | None = None, **kwargs: Any
) -> ProductIndex | MilvusProductIndex:
    """`milvus://host:port/name` or `milvus-lite:///file.db?collection=name` opens Milvus;
    anything else is a FAISS index directory (kwargs go to ProductIndex.open)."""
    if is_milvus_uri(target):
        return MilvusProductIndex.open(str(target), expected_fingerprint=expected_fingerprint)
    return ProductIndex.open(Path(target), expected_fingerprint=expected_fingerprint, **kwargs)
