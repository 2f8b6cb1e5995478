"""What the client returns: frozen dataclasses built from the API's JSON, and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HuseAPIError(Exception):
    """An error answer `{"error", "detail", "request_id"}` (or a batch item's error)."""

    def __init__(
        self, status: int | None, error: str, detail: str, request_id: str | None = None
    ) -> None:
        super().__init__(f"{status or ''} {error}: {detail}".strip())
        self.status = status
        self.error = error
        self.detail = detail
        self.request_id = request_id

    @classmethod
    def from_body(cls, status: int | None, body: Any) -> HuseAPIError:
        if isinstance(body, dict) and "error" in body:
            return cls(status, str(body["error"]), str(body.get("detail", "")),
                       body.get("request_id"))
        return cls(status, "http_error", str(body)[:500])


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    title: str
    category: str
    image_url: str | None


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    query: str  # image, text, fused or product
    notice: str | None = None  # why there are fewer hits than asked

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResult:
        return cls([Hit(**h) for h in data["hits"]], data["query"], data.get("notice"))


@dataclass(frozen=True)
class Label:
    label: str
    score: float


@dataclass(frozen=True)
class LevelPrediction:
    head: str
    answer: str  # the top label, or "other" under the threshold
    other: bool
    labels: list[Label]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LevelPrediction:
        labels = [Label(**x) for x in data["labels"]]
        return cls(data["head"], data["answer"], data["other"], labels)


@dataclass(frozen=True)
class Classification:
    method: str
    threshold: float
    path: LevelPrediction  # the best whole category path
    levels: list[LevelPrediction]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Classification:
        levels = [LevelPrediction.from_json(x) for x in data["levels"]]
        return cls(data["method"], data["threshold"], LevelPrediction.from_json(data["path"]),
                   levels)


@dataclass(frozen=True)
class Product:
    id: str
    title: str
    category: str
    attributes: dict[str, str] = field(default_factory=dict)
    image_url: str | None = None


@dataclass(frozen=True)
class BulkItem:
    id: str | None
    status: str  # created, updated or error
    error: str | None = None
    detail: str | None = None
