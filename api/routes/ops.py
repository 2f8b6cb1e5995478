"""GET /healthz and GET /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import ServicesDep
from api.schemas import HealthPublic

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=HealthPublic)
def healthz(services: ServicesDep) -> HealthPublic:
    return services.health()


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    app_metrics = request.app.state.metrics
    return Response(app_metrics.render(), media_type=app_metrics.content_type)
