"""OpenAPI that tells the truth: the error model and statuses each route can answer, request
bodies that are JSON or a form, and examples on each of them.

Routes that take JSON or a form parse their body themselves (FastAPI derives one body type
per route), so `json_or_form(model)` describes both in the route's `openapi_extra`, and
`install_openapi(app)` adds the models those descriptions name to the document's components.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

REF = "#/components/schemas/{model}"
_BODY_MODELS: dict[str, type[BaseModel]] = {}


class ErrorPublic(BaseModel):
    """Every error body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": "invalid_request", "detail": "k: must be <= 100",
                          "request_id": "5f0c9a3e2b7d4c1a"}]
        }
    )

    error: str = Field(description="short machine-readable code, e.g. product_not_found")
    detail: str = Field(description="what went wrong, for a person")
    request_id: str = Field(description="this request's id (also its X-Request-ID header)")


# status -> (description, example code, example detail)
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("Malformed request (body framing, Content-Length)", "bad_request",
          "invalid Content-Length"),
    401: ("Missing or wrong API key", "missing_key", "send Authorization: Bearer <key>"),
    403: ("Writes are disabled (no API key configured)", "writes_disabled",
          "no API key is configured, so writes are refused"),
    404: ("No such product (or it has no image)", "product_not_found", "'sku-9'"),
    413: ("Body, image bytes or pixels over the limit", "too_many_bytes",
          "image upload exceeds 10485760 bytes"),
    415: ("Body is neither JSON nor a form", "unsupported_media_type",
          "send application/json or multipart/form-data, got text/plain"),
    422: ("Invalid input: a field, an image that does not decode, an empty query",
          "invalid_request", "k: Input should be less than or equal to 100"),
    500: ("Unexpected server error (logged)", "internal", "internal error"),
    503: ("Model or index unavailable", "unavailable", "IndexStoreError: index is closed"),
}
COMMON = (500, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these statuses (plus 500/503) with the error model."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, *COMMON}):
        description, code, detail = _ERRORS[status]
        example = {"error": code, "detail": detail, "request_id": "5f0c9a3e2b7d4c1a"}
        out[status] = {
            "model": ErrorPublic,
            "description": description,
            "content": {"application/json": {"example": example}},
        }
    return out


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    _BODY_MODELS[model.__name__] = model
    return {"$ref": REF.format(model=model.__name__)}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads a JSON `model` itself (per-item validation)."""
    content = {"application/json": {"schema": _schema(model)}}
    return {"requestBody": {"required": True, "content": content}}


def json_or_form(
    model: type[BaseModel], form_types: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`openapi_extra` for a route taking `model` as JSON, or its fields as a form with the
    image as an uploaded file `image` (`form_types` overrides a field's form type)."""
    properties: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name == "image_b64":
            properties["image"] = {
                "type": "string",
                "format": "binary",
                "description": "product photo (JPEG, PNG, WebP, GIF, BMP, TIFF)",
            }
        elif form_types and name in form_types:
            properties[name] = form_types[name]
        elif field.annotation is not None and "dict" not in str(field.annotation):
            properties[name] = _form_field(model, name)
    required = [n for n, f in model.model_fields.items() if f.is_required() and n in properties]
    form = {"type": "object", "properties": properties}
    if required:
        form["required"] = required
    text_only = {n: p for n, p in properties.items() if n != "image"}
    urlencoded = {**form, "properties": text_only}  # no file in a urlencoded form
    examples = (model.model_config.get("json_schema_extra") or {}).get("examples", [])
    json_content: dict[str, Any] = {"schema": _schema(model)}
    if examples:
        json_content["examples"] = {
            f"example {i + 1}": {"value": e} for i, e in enumerate(examples)
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": json_content,
                "multipart/form-data": {"schema": form},
                "application/x-www-form-urlencoded": {"schema": urlencoded},
            },
        }
    }


def _form_field(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A field's JSON schema as a plain form value (no refs)."""
    schema = dict(model.model_json_schema()["properties"][name])
    if "anyOf" in schema:  # `X | None`: the form just leaves the field out
        options = [o for o in schema.pop("anyOf") if o.get("type") != "null"]
        schema.update(options[0])
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def install_openapi(app: FastAPI) -> None:
    """Add the models that `json_body`/`json_or_form` name to the app's OpenAPI components."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, model in _BODY_MODELS.items():
            schema = model.model_json_schema(ref_template=REF, mode="validation")
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(def_name, definition)
            schemas[name] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
