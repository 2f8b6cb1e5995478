"""Request schemas of the HTTP API (`*Create`, one per resource): they carry their own bounds
and are the one layer that validates input (responses are `api.schemas`' `*Public`).

Forms and JSON bodies validate through the same `*Create` models; an image arrives as an
uploaded file (forms) or as `image_b64` (JSON), never as a URL: the server fetches nothing a
client names.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from api.errors import ApiError, InvalidInput
from api.limits import loads_limited
from embedder.classify import METHODS
from huse_common.categories import normalize_path
from huse_common.ids import MAX_PRODUCT_ID_CHARS, PRODUCT_ID_PATTERN
from huse_common.limits import (
    DEFAULT_K,
    MAX_ATTRIBUTES_CHARS,
    MAX_JSON_DEPTH,
    MAX_K,
    MAX_TITLE_CHARS,
    MAX_UPLOAD_BYTES,
)

# Bounds of one request beside huse_common.limits (the settings may only lower
# max_upload_bytes).
MAX_IMAGE_B64_CHARS = 4 * -(-MAX_UPLOAD_BYTES // 3)
MAX_BATCH_QUERIES = 64
MAX_BULK_ITEMS = 256
MAX_PAGE_ITEMS = 500
DEFAULT_PAGE_ITEMS = 100

_PIXEL_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAF0lEQVR4nGO8I8VAEmAiTfmohlENQ0kDAJ"
    "PJAUjkJvCyAAAAAElFTkSuQmCC"
)  # a 16x16 red PNG: the examples' photo


def _title(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_TITLE_CHARS:
        raise ValueError(f"title has {len(value)} characters, limit {MAX_TITLE_CHARS}")
    return value or None


def _json_object(value: Any, name: str) -> dict[str, str]:
    """A {name: text} object; forms send it as JSON text, and scalar values keep their text."""
    if isinstance(value, str):
        if len(value) > MAX_ATTRIBUTES_CHARS:
            raise ValueError(f"{name} have {len(value)} characters, limit {MAX_ATTRIBUTES_CHARS}")
        try:
            value = loads_limited(value, MAX_JSON_DEPTH) if value.strip() else {}
        except ValueError as e:  # not JSON, nested too deep, NaN/Infinity
            raise ValueError(f"{name} must be a JSON object: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    if len(json.dumps(value)) > MAX_ATTRIBUTES_CHARS:
        raise ValueError(f"{name} exceed {MAX_ATTRIBUTES_CHARS} characters as JSON")
    # A non-text value keeps its JSON text ({"b": [1, 2]} -> "[1, 2]"), never Python's repr;
    # NaN/Infinity (json.loads takes them, JSON has none) are refused.
    return {
        str(key): item if isinstance(item, str) else json.dumps(item, allow_nan=False)
        for key, item in value.items()
    }


def _decode_b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"image_b64 is not valid base64: {e}") from e


class _ImageCreate(BaseModel):
    """A request that may carry one image as base64 (JSON) or as an uploaded file (forms)."""

    model_config = ConfigDict(extra="forbid")

    image_b64: str | None = Field(
        None,
        max_length=MAX_IMAGE_B64_CHARS,
        description="the photo's file bytes (JPEG, PNG, WebP, GIF, BMP, TIFF) in base64",
    )
    _image: bytes | None = PrivateAttr(None)

    @field_validator("image_b64")
    @classmethod
    def _check_b64(cls, value: str | None) -> str | None:
        if value:
            _decode_b64(value)
        return value or None

    @property
    def image(self) -> bytes | None:
        """The image bytes, from `image_b64` or from `with_upload`."""
        if self._image is None and self.image_b64 is not None:
            self._image = _decode_b64(self.image_b64)
        return self._image

    def with_upload(self, data: bytes | None) -> _ImageCreate:
        """This request with a form's uploaded file as its image."""
        self._image = data
        return self


class _QueryCreate(_ImageCreate):
    """What to embed: an image, a title, both, or the stored vector of an indexed product."""

    title: str | None = Field(
        None, description="product title", json_schema_extra={"maxLength": MAX_TITLE_CHARS}
    )
    product_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PRODUCT_ID_CHARS,
        description="use an indexed product's stored vector instead of an image/title",
    )
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="results per answer")

    @field_validator("title")
    @classmethod
    def _check_title(cls, value: str | None) -> str | None:
        return _title(value)

    def check_inputs(self) -> str:
        """The query kind (image, text, fused, product); ApiError (422) when the inputs do not
        make one query."""
        has_query = self.image is not None or self.title is not None
        if self.product_id is not None:
            if has_query:
                raise InvalidInput("send either product_id or an image/title, not both")
            return "product"
        if not has_query:
            raise ApiError(422, "empty_request", "send an image, a title, or both")
        if self.image is not None and self.title is not None:
            return "fused"
        return "image" if self.image is not None else "text"


class SearchCreate(_QueryCreate):
    """One search: similar products for an image and/or title, or for an indexed product."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"title": "red cotton shirt", "k": 5, "category": "apparel"},
                {"image_b64": _PIXEL_B64, "title": "red shirt", "filters": {"colour": "Red"}},
                {"product_id": "15970", "k": 10},
            ]
        },
    )

    category: str | None = Field(
        None,
        max_length=1000,
        description='category filter on whole levels, any case: "footwear" or '
        '"Footwear > Shoes" (matches that category and everything below it)',
    )
    filters: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="attribute equality filters, all must hold, e.g. {\"colour\": \"Red\"}",
    )
    visual_weight: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="how much the photo counts against the title in a fused query "
        "(0 = title only, 1 = photo only; default: the model's validated weight)",
    )

    @field_validator("category")
    @classmethod
    def _blank_category(cls, value: str | None) -> str | None:
        return (value or "").strip() or None

    @field_validator("filters", mode="before")
    @classmethod
    def _filters(cls, value: Any) -> Any:
        return _json_object(value, "filters")


class ClassifyCreate(_QueryCreate):
    """One classification: ranked labels per category level."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"title": "leather ankle boots", "k": 3},
                {"image_b64": _PIXEL_B64, "method": "centroid"},
            ]
        },
    )

    method: Literal[METHODS] = Field(  # type: ignore[valid-type]
        "linear", description="linear heads (probabilities) or class centroids (cosines)"
    )


class SearchBatchCreate(BaseModel):
    """Many searches in one call; each is validated and answered on its own, in order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"queries": [{"title": "red shirt", "k": 3}, {"product_id": "15970"}]}]
        }
    )

    queries: list[SearchCreate] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


class ClassifyBatchCreate(BaseModel):
    """Many classifications in one call; each is validated and answered on its own, in order."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"queries": [{"title": "boots"}, {"title": "watch"}]}]}
    )

    queries: list[ClassifyCreate] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


class ProductCreate(_ImageCreate):
    """A product to store (PUT replaces the whole product; no image keeps none)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "green canvas sneaker",
                    "category": "Footwear > Sneakers",
                    "attributes": {"colour": "Green"},
                    "image_b64": _PIXEL_B64,
                }
            ]
        },
    )

    title: str = Field(
        description="product title", json_schema_extra={"maxLength": MAX_TITLE_CHARS}
    )
    category: str = Field(
        max_length=1000, description='category path, levels joined by ">": "Footwear > Shoes"'
    )
    attributes: dict[str, str] = Field(
        default_factory=dict, description='attribute columns, e.g. {"colour": "Green"}'
    )

    @field_validator("title")
    @classmethod
    def _required_title(cls, value: str) -> str:
        title = _title(value)
        if title is None:
            raise ValueError("title must not be empty")
        return title

    @field_validator("category")
    @classmethod
    def _category_levels(cls, value: str) -> str:
        return normalize_path(value)

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes(cls, value: Any) -> Any:
        return _json_object(value, "attributes")


class ProductBulkItemCreate(ProductCreate):
    """One product of a bulk upsert, with its id."""

    id: str = Field(
        min_length=1, max_length=MAX_PRODUCT_ID_CHARS, pattern=PRODUCT_ID_PATTERN
    )


class ProductsBulkCreate(BaseModel):
    """Products to upsert in one durable transaction; each item is validated on its own."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": "sku-1", "title": "red shirt", "category": "Apparel > Topwear"},
                        {"id": "sku-2", "title": "blue jeans", "category": "Apparel > Bottomwear",
                         "attributes": {"colour": "Blue"}, "image_b64": _PIXEL_B64},
                    ]
                }
            ]
        }
    )

    items: list[ProductBulkItemCreate] = Field(min_length=1, max_length=MAX_BULK_ITEMS)
