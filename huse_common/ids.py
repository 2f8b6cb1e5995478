"""Product ids: one grammar for what the catalog reader accepts and the API routes take (the
index itself stores any non-empty id its backend can hold)."""

from __future__ import annotations

import re

# The product id grammar: 1 to 256 characters, none of them a control character, "/" or "\\",
# and at least one that is neither "." nor whitespace. Ids travel as one URL path segment
# (/v1/products/{id}); an id of dots only ("." or "..") is a dot-segment that clients
# normalise away, turning its image_url into another route.
MAX_PRODUCT_ID_CHARS = 256
PRODUCT_ID_PATTERN = (
    r"^[^\x00-\x1f\x7f/\\]*[^\x00-\x1f\x7f/\\.\s][^\x00-\x1f\x7f/\\]*$"
)
_PRODUCT_ID = re.compile(PRODUCT_ID_PATTERN)


def check_product_id(product_id: object) -> str:
    """`product_id` if it fits the id grammar above; ValueError saying why it does not."""
    if not isinstance(product_id, str):
        raise TypeError(f"product id must be a str, got {type(product_id).__name__}")
    if not 1 <= len(product_id) <= MAX_PRODUCT_ID_CHARS:
        raise ValueError(
            f"product id must have 1 to {MAX_PRODUCT_ID_CHARS} characters, got {len(product_id)}"
        )
    if not _PRODUCT_ID.fullmatch(product_id):
        raise ValueError(
            f"product id {product_id!r:.80} is not valid: no control characters, '/' or '\\', "
            "and not only dots and spaces"
        )
    return product_id
