"""Liveness, readiness and Prometheus metrics (no key needed: probes and scrapers call these)."""

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import jobs_queue, metrics
from app.api.deps import SessionDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database or the broker is down."}})
def readyz(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Ready to take jobs: the database answers a query and the broker answers a ping."""
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready", never a 500
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["broker"] = "ok" if jobs_queue.broker_reachable(settings) else "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/metrics", response_class=Response)
def prometheus_metrics(session: SessionDep, settings: SettingsDep) -> Response:
    """Prometheus text: request counts and latencies, jobs by state, queue depth."""
    body, content_type = metrics.render(session, settings)
    return Response(body, media_type=content_type)
