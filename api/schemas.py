"""Response schemas (`*Public`) of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LabelScorePublic(BaseModel):
    label: str
    score: float


class LevelPredictionPublic(BaseModel):
    head: str = Field(description="label space, e.g. level1..levelK or attr:<column>")
    answer: str = Field(description='top label, or "other" when its score is under threshold')
    other: bool
    labels: list[LabelScorePublic]


class ClassifyPublic(BaseModel):
    method: str
    threshold: float
    path: LevelPredictionPublic = Field(
        description="best whole category paths, consistent at every level (head 'path')")
    levels: list[LevelPredictionPublic]


class SearchHitPublic(BaseModel):
    id: str
    score: float
    title: str
    category: str
    image_url: str | None


class SearchPublic(BaseModel):
    hits: list[SearchHitPublic]
    count: int
    query: str = Field(description="image, text, fused or product")


class ProductPublic(BaseModel):
    id: str
    title: str
    category: str
    attributes: dict[str, str]
    image_url: str | None


class DeletedPublic(BaseModel):
    id: str
    deleted: bool


class HealthPublic(BaseModel):
    status: str
    model: dict
    index: dict
    batching: dict
    versions: dict[str, str]
