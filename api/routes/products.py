"""Products: writes (key required) one at a time or in bulk, reads of one product and its
image, and a cursor listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from api.deps import CatalogDep, ServicesDep, WriteAccess
from api.media import MEDIA_TYPES, StoredImageResponse
from api.openapi import errors, json_body, json_or_form
from api.requests import (
    DEFAULT_PAGE_ITEMS,
    MAX_BULK_ITEMS,
    MAX_PAGE_ITEMS,
    MAX_PRODUCT_ID_CHARS,
    PRODUCT_ID_PATTERN,
    ProductBulkItemCreate,
    ProductCreate,
    ProductsBulkCreate,
)
from api.routes.bodies import read_items, read_json_or_form
from api.schemas import DeletedPublic, ProductPublic, ProductsBulkPublic, ProductsPublic

router = APIRouter(prefix="/v1", tags=["products"])

ProductId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_PRODUCT_ID_CHARS,
        pattern=PRODUCT_ID_PATTERN,
        examples=["15970"],
    ),
]
_FORM_TYPES = {
    "attributes": {"type": "string", "description": 'JSON object, e.g. {"colour": "red"}'}
}
_IMAGE_TYPES = {media_type: {} for media_type in sorted(set(MEDIA_TYPES.values()))}


@router.get("/products", response_model=ProductsPublic, responses=errors(422))
async def list_products(
    catalog: CatalogDep,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)] = DEFAULT_PAGE_ITEMS,
    category: Annotated[
        str | None,
        Query(max_length=1000, description="whole-level category prefix, any case"),
    ] = None,
) -> ProductsPublic:
    """Products in a stable order, a page at a time: follow `next_cursor` until it is null.
    Writes during a walk never make it skip or repeat a product that stays."""
    return await catalog.page(cursor, limit, category)


@router.post(
    "/products:bulk",
    response_model=ProductsBulkPublic,
    responses=errors(400, 401, 403, 413, 415, 422),
    dependencies=[WriteAccess],
    openapi_extra=json_body(ProductsBulkCreate),
)
async def bulk_upsert(request: Request, catalog: CatalogDep) -> ProductsBulkPublic:
    """Upsert up to 256 products (images as base64) in one durable transaction. Each item gets
    its status in its place: created, updated, or error (that item is not written)."""
    raw, items = await read_items(request, ProductBulkItemCreate, "items", MAX_BULK_ITEMS)
    ids = [r.get("id") if isinstance(r, dict) and isinstance(r.get("id"), str) else None
           for r in raw]
    return await catalog.put_many(items, ids)


@router.put(
    "/products/{product_id}",
    response_model=ProductPublic,
    responses=errors(400, 401, 403, 413, 415, 422),
    dependencies=[WriteAccess],
    openapi_extra=json_or_form(ProductCreate, _FORM_TYPES),
)
async def put_product(
    request: Request, services: ServicesDep, catalog: CatalogDep, product_id: ProductId
) -> ProductPublic:
    """Create or replace a product (durable when answered); without an image it has none."""
    body = await read_json_or_form(request, ProductCreate, services.settings.max_upload_bytes)
    return await catalog.put(product_id, body)


@router.delete(
    "/products/{product_id}",
    response_model=DeletedPublic,
    responses=errors(401, 403, 404, 422),
    dependencies=[WriteAccess],
)
async def delete_product(catalog: CatalogDep, product_id: ProductId) -> DeletedPublic:
    """Delete a product; its uploaded image goes once no product uses it."""
    return await catalog.delete(product_id)


@router.get("/products/{product_id}", response_model=ProductPublic, responses=errors(404, 422))
async def get_product(catalog: CatalogDep, product_id: ProductId) -> ProductPublic:
    return await catalog.get(product_id)


@router.get(
    "/products/{product_id}/image",
    response_class=StoredImageResponse,
    responses={
        200: {"content": _IMAGE_TYPES, "description": "the stored image"},
        **errors(404, 422),
    },
)
async def get_product_image(catalog: CatalogDep, product_id: ProductId) -> StoredImageResponse:
    return await catalog.image(product_id)
