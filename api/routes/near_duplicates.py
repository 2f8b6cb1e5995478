"""GET /v1/products/{id}/near-duplicates: listings that are the same item as this product."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ServicesDep
from api.openapi import errors
from api.routes.products import ProductId
from api.schemas import SearchPublic
from huse_common.limits import MAX_K

router = APIRouter(prefix="/v1/products", tags=["products"])


@router.get("/{product_id}/near-duplicates", response_model=SearchPublic,
            responses=errors(404, 422))
async def near_duplicates(
    services: ServicesDep,
    product_id: ProductId,
    threshold: Annotated[
        float | None,
        Query(ge=-1.0, le=1.0, description="visual cosine (default: the bundle's validated one)"),
    ] = None,
    k: Annotated[
        int | None, Query(ge=1, le=MAX_K, description="most candidates looked at (default 10)")
    ] = None,
) -> SearchPublic:
    """Indexed products that are this product's item listed again (re-encoded, cropped or
    resized photo, another seller): visual cosine at least `threshold`, best first."""
    return await services.near_duplicates(product_id, threshold, k)
