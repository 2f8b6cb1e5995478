"""GET /healthz and GET /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import ServicesDep
from api.errors import error_responses
from api.schemas import HealthPublic

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=HealthPublic, responses=error_responses(503))
def healthz(services: ServicesDep) -> HealthPublic:
    return services.health()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    app_metrics = request.app.state.metrics
    return Response(app_metrics.render(), media_type=app_metrics.content_type)
