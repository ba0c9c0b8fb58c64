"""Liveness, readiness and metrics, plus the KServe v2 health paths."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import ServicesDep
from ..schemas import Health

router = APIRouter(tags=["health"])

NOT_READY_RETRY_AFTER_SECONDS = "5"


@router.get("/healthz")
@router.get("/v2/health/live")
async def live() -> Health:
    """Return 200 while the process serves requests; touches no database and no model."""
    return Health(status="ok")


def _readiness(services: ServicesDep) -> tuple[bool, str | None]:
    if not services.registry.ping():
        return False, "registry database unreachable"
    pending = services.scanner.startup_pending
    if pending:
        return False, f"{pending} start-up scans pending"
    return True, None


@router.get("/readyz", responses={503: {"model": Health}})
@router.get("/v2/health/ready", responses={503: {"model": Health}})
async def ready(services: ServicesDep) -> JSONResponse:
    """Return 200 once the registry is open and every start-up scan has finished, 503 before."""
    is_ready, detail = await run_in_threadpool(_readiness, services)
    if is_ready:
        return JSONResponse(Health(status="ok").model_dump())
    return JSONResponse(Health(status="starting", detail=detail).model_dump(),
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": NOT_READY_RETRY_AFTER_SECONDS})


@router.get("/v2/models/{name}/ready", responses={503: {"model": Health}})
def model_ready(name: str, services: ServicesDep) -> JSONResponse:
    """Return 200 when the model is ready to guard requests, 503 while it is queued, scanning or failed."""
    record = services.models.get(name)
    if record.state == "ready":
        return JSONResponse(Health(status="ok").model_dump())
    return JSONResponse(Health(status="unavailable", detail=f"model is {record.state}").model_dump(),
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Return the app's metrics in the Prometheus text format."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
