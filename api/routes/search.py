"""POST /v1/search and /v1/search:batch: similar products for an image and/or title, or for an
indexed product, as JSON or a form."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import ServicesDep
from api.openapi import errors, json_body, json_or_form
from api.requests import MAX_BATCH_QUERIES, SearchBatchCreate, SearchCreate
from api.routes.bodies import read_items, read_json_or_form
from api.schemas import SearchBatchPublic, SearchPublic

router = APIRouter(prefix="/v1", tags=["search"])


@router.post(
    "/search",
    response_model=SearchPublic,
    responses=errors(400, 404, 413, 415, 422),
    openapi_extra=json_or_form(
        SearchCreate,
        {"filters": {"type": "string", "description": 'JSON object, e.g. {"colour": "Red"}'}},
    ),
)
async def search(request: Request, services: ServicesDep) -> SearchPublic:
    """Nearest products to a photo, a title, both (fused), or an indexed product ("more like
    this", which leaves that product out). `category` filters whole levels in any case and
    `filters` asks attributes to be equal; an answer that cannot be full says why in
    `notice`."""
    body = await read_json_or_form(request, SearchCreate, services.settings.max_upload_bytes)
    return await services.search(body)


@router.post(
    "/search:batch",
    response_model=SearchBatchPublic,
    responses=errors(400, 413, 415, 422),
    openapi_extra=json_body(SearchBatchCreate),
)
async def search_batch(request: Request, services: ServicesDep) -> SearchBatchPublic:
    """Up to 64 searches in one call, run together through the micro-batcher. Each result is
    in its query's place: `{"hits": ...}`, or `{"error", "detail"}` for a bad query."""
    _, queries = await read_items(request, SearchCreate, "queries", MAX_BATCH_QUERIES)
    return SearchBatchPublic(results=await services.search_each(queries))
