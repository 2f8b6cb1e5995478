"""Response schemas of the HTTP API (`*Public`, one family per resource), each with an
example for the OpenAPI document; requests are `api.requests`' `*Create`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def _examples(*examples: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class LabelScorePublic(BaseModel):
    model_config = _examples({"label": "Footwear", "score": 0.93})

    label: str
    score: float


_LEVEL_EXAMPLE = {
    "head": "level1",
    "answer": "Footwear",
    "other": False,
    "labels": [{"label": "Footwear", "score": 0.93}, {"label": "Apparel", "score": 0.05}],
}


class LevelPredictionPublic(BaseModel):
    model_config = _examples(_LEVEL_EXAMPLE)

    head: str = Field(description="label space, e.g. level1..levelK or attr:<column>")
    answer: str = Field(description='top label, or "other" when its score is under threshold')
    other: bool
    labels: list[LabelScorePublic]


_CLASSIFY_EXAMPLE = {
    "method": "linear",
    "threshold": 0.3,
    "path": {**_LEVEL_EXAMPLE, "head": "path", "answer": "Footwear > Shoes > Casual Shoes"},
    "levels": [_LEVEL_EXAMPLE],
}


class ClassifyPublic(BaseModel):
    model_config = _examples(_CLASSIFY_EXAMPLE)

    method: str
    threshold: float
    path: LevelPredictionPublic = Field(
        description="best whole category paths, consistent at every level (head 'path')")
    levels: list[LevelPredictionPublic]


_HIT_EXAMPLE = {
    "id": "15970",
    "score": 0.87,
    "title": "Turtle Check Men Navy Blue Shirt",
    "category": "Apparel > Topwear > Shirts",
    "image_url": "/v1/products/15970/image",
}


class SearchHitPublic(BaseModel):
    model_config = _examples(_HIT_EXAMPLE)

    id: str
    score: float
    title: str
    category: str
    image_url: str | None


_SEARCH_EXAMPLE = {"hits": [_HIT_EXAMPLE], "count": 1, "query": "text", "notice": None}


class SearchPublic(BaseModel):
    model_config = _examples(_SEARCH_EXAMPLE)

    hits: list[SearchHitPublic]
    count: int
    query: str = Field(description="image, text, fused or product")
    notice: str | None = Field(
        None, description="why there are fewer hits than asked, e.g. a category matching nothing"
    )


class BatchErrorPublic(BaseModel):
    """One query of a batch that failed; the others are answered."""

    model_config = _examples({"error": "invalid_request", "detail": "k: must be <= 100"})

    error: str
    detail: str


class SearchBatchPublic(BaseModel):
    model_config = _examples({"results": [_SEARCH_EXAMPLE, {"error": "empty_request",
                                                            "detail": "send an image, a title, "
                                                            "or both"}]})

    results: list[SearchPublic | BatchErrorPublic] = Field(description="one per query, in order")


class ClassifyBatchPublic(BaseModel):
    model_config = _examples({"results": [_CLASSIFY_EXAMPLE]})

    results: list[ClassifyPublic | BatchErrorPublic] = Field(
        description="one per query, in order"
    )


_PRODUCT_EXAMPLE = {
    "id": "new-1",
    "title": "green canvas sneaker",
    "category": "Footwear > Sneakers",
    "attributes": {"colour": "Green"},
    "image_url": "/v1/products/new-1/image",
}


class ProductPublic(BaseModel):
    model_config = _examples(_PRODUCT_EXAMPLE)

    id: str
    title: str
    category: str
    attributes: dict[str, str]
    image_url: str | None


class ProductsPublic(BaseModel):
    model_config = _examples({"items": [_PRODUCT_EXAMPLE], "next_cursor": "MTI4", "notice": None})

    items: list[ProductPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: done")
    notice: str | None = Field(None, description="e.g. a category matching no product")


class BulkItemPublic(BaseModel):
    model_config = _examples({"id": "sku-1", "status": "created", "error": None, "detail": None})

    id: str | None = Field(description="the item's id (null if the item had no valid id)")
    status: Literal["created", "updated", "error"]
    error: str | None = None
    detail: str | None = None


class ProductsBulkPublic(BaseModel):
    model_config = _examples(
        {
            "items": [
                {"id": "sku-1", "status": "created"},
                {"id": "sku-2", "status": "error", "error": "truncated",
                 "detail": "image is truncated"},
            ],
            "written": 1,
        }
    )

    items: list[BulkItemPublic] = Field(description="one per item, in order")
    written: int = Field(description="products committed (in one transaction)")


class DeletedPublic(BaseModel):
    model_config = _examples({"id": "new-1", "deleted": True})

    id: str
    deleted: bool


class HealthPublic(BaseModel):
    model_config = _examples(
        {
            "status": "ok",
            "model": {"fingerprint": "3f2a...", "dim": 256},
            "index": {"size": 3948},
            "batching": {"enabled": True},
            "versions": {"python": "3.11.2"},
        }
    )

    status: str
    model: dict
    index: dict
    batching: dict
    versions: dict[str, str]
