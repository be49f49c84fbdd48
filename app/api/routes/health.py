"""Liveness, readiness and Prometheus metrics (no key needed: probes and scrapers call these)."""

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import jobs_queue, metrics
from app.api.deps import SessionDep, SettingsDep
from app.serving import serving_ready

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "The database or the broker is down, or warm-up not done."}},
)
def readyz(request: Request, session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Ready: the database answers a query, the broker a ping, and warm-up models are loaded."""
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready", never a 500
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["broker"] = "ok" if jobs_queue.broker_reachable(settings) else "unreachable"
    checks["serving"] = "ok" if serving_ready(request.app) else "warming up"
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
