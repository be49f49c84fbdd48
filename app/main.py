"""The FastAPI application: `create_app(settings)` for tests and tools, `app` for uvicorn."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import sessionmaker
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import errors
from app.api.routes import architectures, datasets, health, jobs, models, predict
from app.db.engine import get_sessionmaker, make_engine
from app.metrics import MetricsMiddleware
from app.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"


class BodyLimitMiddleware:
    """413 for a body over FRESHNETS_MAX_REQUEST_BYTES (uploads: FRESHNETS_MAX_UPLOAD_BYTES).

    The Content-Length is checked before anything is read, and a body without one is counted
    as it streams, so an oversize request never reaches memory or disk.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.default = RequestBodyLimitMiddleware(app, settings.max_request_bytes)
        self.upload = RequestBodyLimitMiddleware(
            app, settings.max_upload_bytes + datasets.UPLOAD_OVERHEAD_BYTES
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_upload = (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") == "/v1/datasets"
        )
        await (self.upload if is_upload else self.default)(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app on `settings` (default: the process's); each app has its own database engine."""
    if settings is None:
        settings = get_settings()
        session_factory = get_sessionmaker()
    else:
        session_factory = sessionmaker(
            make_engine(settings.effective_database_url), expire_on_commit=False
        )
    app = FastAPI(
        title="FreshNets",
        version="0.1.0",
        summary="Train and serve compressed CNNs with FreshNets (frequency-sensitive hashed nets).",
        description="Every `/v1` route needs `Authorization: Bearer <key>` "
        "(`freshnets keys create NAME`).",
    )
    app.state.settings = settings
    app.state.sessionmaker = session_factory
    errors.install(app, settings)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware)
    for module in (health, datasets, architectures, jobs, models, predict):
        app.include_router(module.router)
    if STATIC_DIR.is_dir():
        # Last, so that every API route matches first; "/" serves the dashboard's index.html.
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")
    return app


app = create_app()
