"""GET /v1/facets: category paths and attribute values with counts, for filter menus."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ServicesDep
from api.facets import FacetsPublic, facets

router = APIRouter(prefix="/v1", tags=["search"])

_ERROR_EXAMPLES = {
    422: ("`limit` out of range", {"error": "invalid_request", "detail": "limit: ..."}),
    503: ("the index cannot be read", {"error": "unavailable", "detail": "..."}),
}


@router.get(
    "/facets",
    response_model=FacetsPublic,
    responses={
        status: {"description": text, "content": {"application/json": {"example": body}}}
        for status, (text, body) in _ERROR_EXAMPLES.items()
    },
)
def get_facets(
    services: ServicesDep,
    limit: Annotated[
        int, Query(ge=1, le=1000, description="most frequent values listed per attribute")
    ] = 50,
) -> FacetsPublic:
    """Every category prefix (the `category` search filter takes any of them) and each
    attribute column's commonest values, counted over the live products of the index."""
    return facets(services.index, limit)
