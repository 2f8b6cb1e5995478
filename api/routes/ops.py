"""GET /healthz and GET /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import ServicesDep
from api.health import health
from api.openapi import errors
from api.schemas import HealthPublic

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=HealthPublic, responses=errors())
def healthz(services: ServicesDep) -> HealthPublic:
    """What is loaded: bundle fingerprint, index size, batching, package versions."""
    return health(services)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
)
def metrics(request: Request) -> Response:
    app_metrics = request.app.state.metrics
    return Response(app_metrics.render(), media_type=app_metrics.content_type)
