"""POST /v1/classify and /v1/classify:batch: ranked labels per category level for an image
and/or a title (or an indexed product), as JSON or a form."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import ServicesDep
from api.openapi import errors, json_body, json_or_form
from api.requests import MAX_BATCH_QUERIES, ClassifyBatchCreate, ClassifyCreate
from api.routes.bodies import read_items, read_json_or_form
from api.schemas import ClassifyBatchPublic, ClassifyPublic

router = APIRouter(prefix="/v1", tags=["classify"])


@router.post(
    "/classify",
    response_model=ClassifyPublic,
    responses=errors(400, 404, 413, 415, 422),
    openapi_extra=json_or_form(ClassifyCreate),
)
async def classify(request: Request, services: ServicesDep) -> ClassifyPublic:
    """The best whole category path, then the top-k labels of every head; a top score under
    the threshold answers "other"."""
    body = await read_json_or_form(request, ClassifyCreate, services.settings.max_upload_bytes)
    return await services.classify(body)


@router.post(
    "/classify:batch",
    response_model=ClassifyBatchPublic,
    responses=errors(400, 413, 415, 422),
    openapi_extra=json_body(ClassifyBatchCreate),
)
async def classify_batch(request: Request, services: ServicesDep) -> ClassifyBatchPublic:
    """Up to 64 classifications in one call, in order; a bad query gets its own error."""
    _, queries = await read_items(request, ClassifyCreate, "queries", MAX_BATCH_QUERIES)
    return ClassifyBatchPublic(results=await services.classify_each(queries))
