"""GET /v1/facets: category paths and attribute values with counts, for filter menus."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ServicesDep
from api.facets import FacetsPublic, facets
from api.openapi import errors

router = APIRouter(prefix="/v1", tags=["search"])

@router.get(
    "/facets",
    response_model=FacetsPublic,
    responses=errors(422),
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
