"""Request dependencies: the shared Services and Catalog objects and the write-key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.catalog import Catalog
from api.errors import ApiError
from api.services import Services

_bearer = HTTPBearer(auto_error=False, description="write key (--api-key or HUSE_API_KEY)")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_catalog(request: Request) -> Catalog:
    return request.app.state.services.catalog


CatalogDep = Annotated[Catalog, Depends(get_catalog)]


def require_api_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Writes need `Authorization: Bearer <key>`; with no key configured, every write is refused."""
    configured = services.settings.api_key
    if configured is None:
        raise ApiError(403, "writes_disabled", "no API key is configured, so writes are refused")
    if credentials is None:
        raise ApiError(401, "missing_key", "send Authorization: Bearer <key>", _CHALLENGE)
    if not secrets.compare_digest(
        credentials.credentials.encode(), configured.get_secret_value().encode()
    ):
        raise ApiError(401, "wrong_key", "the API key is not valid", _CHALLENGE)


WriteAccess = Depends(require_api_key)
