"""Catalog writes (key required) and reads of single products and their images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path
from fastapi.responses import FileResponse

from api.deps import ServicesDep, WriteAccess
from api.media import MEDIA_TYPES, read_upload
from api.routes.forms import ImageField
from api.schemas import DeletedPublic, ProductPublic

router = APIRouter(prefix="/v1/products", tags=["products"])

ProductId = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.put("/{product_id}", response_model=ProductPublic, dependencies=[WriteAccess])
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


@router.delete("/{product_id}", response_model=DeletedPublic, dependencies=[WriteAccess])
async def delete_product(services: ServicesDep, product_id: ProductId) -> DeletedPublic:
    return await services.delete_product(product_id)


@router.get("/{product_id}", response_model=ProductPublic)
async def get_product(services: ServicesDep, product_id: ProductId) -> ProductPublic:
    return await services.get_product(product_id)


@router.get("/{product_id}/image", response_class=FileResponse)
async def get_product_image(services: ServicesDep, product_id: ProductId) -> FileResponse:
    path = await services.product_image(product_id)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lower()])
