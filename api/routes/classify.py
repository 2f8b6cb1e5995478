"""POST /v1/classify: ranked labels per category level for an image and/or a title."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form

from api.deps import ServicesDep
from api.errors import error_responses
from api.media import read_upload
from api.routes.forms import ImageField, KField, TitleField
from api.schemas import ClassifyPublic

router = APIRouter(prefix="/v1", tags=["classify"])


@router.post(
    "/classify", response_model=ClassifyPublic, responses=error_responses(400, 413, 422, 503)
)
async def classify(
    services: ServicesDep,
    image: ImageField = None,
    title: TitleField = None,
    k: KField = None,
    method: Annotated[Literal["linear", "centroid"], Form()] = "linear",
) -> ClassifyPublic:
    data = await read_upload(image, services.settings.max_upload_bytes)
    k = k if k is not None else services.settings.default_k
    return await services.classify(data, title, k, method)
