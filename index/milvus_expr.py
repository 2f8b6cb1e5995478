"""Milvus filter expressions and row keys for product rows (string literals Milvus can
spell, category prefixes, the page cursor's key)."""

from __future__ import annotations

import hashlib
import json
import re

from huse_common.categories import join_path, split_path
from index.metadata import ProductFilter, normalize_category

KEY_BITS = 63  # cursor keys are non-negative int64
# Milvus string literals accept \" \\ \n \t \r escapes only (json.dumps' \uXXXX is refused).
_UNQUOTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def literal(value: str) -> str:
    """A Milvus filter-expression string literal (ValueError where none can spell it)."""
    if _UNQUOTABLE.search(value):
        raise ValueError(f"{value!r:.100} has control characters a Milvus filter cannot spell")
    return json.dumps(value, ensure_ascii=False)


def quotable(value: str) -> bool:
    return _UNQUOTABLE.search(value) is None


def row_key(product_id: str) -> int:
    """A stable non-negative int64 for an id (sha256 prefix): the page cursor's order."""
    digest = hashlib.sha256(product_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - KEY_BITS)


def where_filter(where: ProductFilter) -> str | None:
    """A Milvus expression for a ProductFilter; None when nothing can match (no categories)."""
    parts = []
    if where.categories is not None:
        if not where.categories:
            return None
        prefixes = ", ".join(literal(normalize_category(c)) for c in where.categories)
        parts.append(f"array_contains_any(paths, [{prefixes}])")
    for name, value in where.attributes:
        parts.append(f"attributes[{literal(name)}] == {literal(str(value))}")
    return " and ".join(parts)


def category_paths(category: str) -> list[str]:
    """Every whole-level prefix of a category: 'A > B' -> ['A', 'A > B']."""
    levels = split_path(category)
    return [join_path(levels[: i + 1]) for i in range(len(levels))]
