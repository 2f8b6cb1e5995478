"""Request bodies as JSON or as a form, validated by the same `*Create` schema.

A JSON body carries its image as `image_b64`; a form carries it as the uploaded file
`image` (the web page, curl -F). Form fields left empty count as absent, as FastAPI's own
form handling does. Any other content type is refused with 415.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from api.errors import ApiError, validation_detail
from api.media import read_upload
from api.schemas import BatchErrorPublic

M = TypeVar("M", bound=BaseModel)

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def validate(model: type[M], data: Any) -> M:
    """`model` from parsed data; 422 invalid_request naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


async def read_json(request: Request) -> Any:
    if _media_type(request) != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send application/json, got {_media_type(request) or 'no content type'}",
        )
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(422, "invalid_json", f"the body is not JSON: {e}") from None


async def read_json_or_form(
    request: Request, model: type[M], max_upload_bytes: int, **extra: Any
) -> M:
    """`model` from a JSON body or from a form (its image from the file part `image`).
    `extra` fields (e.g. a path parameter) join the body's."""
    media_type = _media_type(request)
    if media_type == "application/json":
        data = await read_json(request)
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_request", "the JSON body must be an object")
        return validate(model, {**data, **extra})
    if media_type not in FORM_TYPES and (media_type or await request.body()):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send application/json or multipart/form-data, got {media_type}",
        )
    form = await request.form()
    upload = form.get("image")
    if upload is not None and not isinstance(upload, UploadFile):
        raise ApiError(422, "invalid_request", "image: send the photo as a file part")
    fields = {
        name: value
        for name, value in form.items()
        if name in model.model_fields
        and name != "image_b64"
        and isinstance(value, str)
        and (value != "" or model.model_fields[name].is_required())
    }
    parsed = validate(model, {**fields, **extra})
    return parsed.with_upload(await read_upload(upload, max_upload_bytes))


async def read_items(
    request: Request, model: type[M], key: str, max_items: int
) -> tuple[list[Any], list[M | BatchErrorPublic]]:
    """A JSON `{key: [...]}` body whose items are validated one by one: a bad item becomes its
    own error (in its place), the others go on. -> (the raw items, the validated ones)."""
    data = await read_json(request)
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= max_items:
        raise ApiError(
            422, "invalid_request", f"send {{{key!r}: [...]}} with 1 to {max_items} items"
        )
    out: list[M | BatchErrorPublic] = []
    for item in items:
        try:
            out.append(validate(model, item))
        except RequestValidationError as e:
            out.append(BatchErrorPublic(error="invalid_request", detail=validation_detail(e)))
    return items, out
