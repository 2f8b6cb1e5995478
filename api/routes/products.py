"""Catalog writes (key required) and reads of single products and their images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path

from api.deps import ServicesDep, WriteAccess
from api.errors import error_responses
from api.media import MEDIA_TYPES, StoredImageResponse, read_upload
from api.routes.forms import ImageField
from api.schemas import DeletedPublic, ProductPublic
from huse_common.ids import PRODUCT_ID_MAX_CHARS, PRODUCT_ID_PATTERN

router = APIRouter(prefix="/v1/products", tags=["products"])

ProductId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=PRODUCT_ID_MAX_CHARS,
        pattern=PRODUCT_ID_PATTERN,
        description="1-256 characters; no control characters, '/' or '\\'; not only dots "
        "and spaces (see huse_common.ids)",
    ),
]
WRITE_ERRORS = (401, 403, 422, 503)
IMAGE_RESPONSE = {
    "description": "The product's image",
    "content": {media_type: {} for media_type in sorted(set(MEDIA_TYPES.values()))},
}


@router.put(
    "/{product_id}",
    response_model=ProductPublic,
    dependencies=[WriteAccess],
    responses=error_responses(400, 413, *WRITE_ERRORS),
)
async def put_product(
    services: ServicesDep,
    product_id: ProductId,
    title: Annotated[str, Form(description="product title")],
    category: Annotated[str, Form(description='category path, e.g. "Footwear > Shoes"')],
    image: ImageField = None,
    attributes: Annotated[
        str | None, Form(description='JSON object, e.g. {"colour": "red"}')
    ] = None,
) -> ProductPublic:
    data = await read_upload(image, services.settings.max_upload_bytes)
    return await services.put_product(product_id, data, title, category, attributes)


@router.delete(
    "/{product_id}",
    response_model=DeletedPublic,
    dependencies=[WriteAccess],
    responses=error_responses(404, *WRITE_ERRORS),
)
async def delete_product(services: ServicesDep, product_id: ProductId) -> DeletedPublic:
    return await services.delete_product(product_id)


@router.get("/{product_id}", response_model=ProductPublic, responses=error_responses(404, 422, 503))
async def get_product(services: ServicesDep, product_id: ProductId) -> ProductPublic:
    return await services.get_product(product_id)


@router.get(
    "/{product_id}/image",
    response_class=StoredImageResponse,
    responses={200: IMAGE_RESPONSE, **error_responses(404, 422, 503)},
)
async def get_product_image(services: ServicesDep, product_id: ProductId) -> StoredImageResponse:
    return await services.product_image(product_id)
