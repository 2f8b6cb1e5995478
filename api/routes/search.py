"""POST /v1/search: similar products for an image and/or title, or for an indexed product."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form

from api.deps import ServicesDep
from api.errors import error_responses
from api.media import read_upload
from api.routes.forms import ImageField, KField, TitleField
from api.schemas import SearchPublic

router = APIRouter(prefix="/v1", tags=["search"])


@router.post(
    "/search", response_model=SearchPublic, responses=error_responses(400, 404, 413, 422, 503)
)
async def search(
    services: ServicesDep,
    image: ImageField = None,
    title: TitleField = None,
    product_id: Annotated[
        str | None, Form(description='"more like this" an indexed product')
    ] = None,
    k: KField = None,
    category: Annotated[
        str | None, Form(description='category prefix filter, e.g. "Footwear"')
    ] = None,
) -> SearchPublic:
    data = await read_upload(image, services.settings.max_upload_bytes)
    k = k if k is not None else services.settings.default_k
    return await services.search(data, title, product_id, k, category)
