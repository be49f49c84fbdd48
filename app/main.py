"""The FastAPI application: `create_app(settings)` for tests and tools, `app` for uvicorn."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import sessionmaker
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import errors
from app.api.routes import architectures, datasets, health, jobs, models, predict, usage
from app.db.engine import get_sessionmaker, make_engine
from app.metrics import MetricsMiddleware
from app.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"


class BodyLimitMiddleware:
    """413 for a body over FRESHNETS_MAX_REQUEST_BYTES (uploads: FRESHNETS_MAX_UPLOAD_BYTES).

    A Content-Length over the limit is refused before anything is read. A body within its
    Content-Length needs no counting (the HTTP server delivers no more than it says); a body
    without one (chunked) is counted as it streams (Starlette's limiter), so an oversize request
    never fills memory or disk.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        framing = datasets.UPLOAD_OVERHEAD_BYTES
        self.limits = {  # the bytes a body may have, and the setting that says so
            False: (
                settings.max_request_bytes,
                f"FRESHNETS_MAX_REQUEST_BYTES ({settings.max_request_bytes:,} bytes)",
            ),
            True: (
                settings.max_upload_bytes + framing,
                f"FRESHNETS_MAX_UPLOAD_BYTES ({settings.max_upload_bytes:,} bytes, plus "
                f"{framing:,} for the form around the file)",
            ),
        }
        self.streamed = {
            upload: RequestBodyLimitMiddleware(app, limit)
            for upload, (limit, _) in self.limits.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/datasets"
        limit, setting = self.limits[upload]
        length = _content_length(scope)
        if length is None:
            await self.streamed[upload](scope, receive, send)
        elif length > limit:
            detail = f"body: {length:,} bytes is over {setting}"
            response = JSONResponse({"detail": detail}, status_code=413)
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The Content-Length that bounds the request's body, or None when none does: no such
    header, a malformed one, or a Transfer-Encoding beside it (which would frame the body
    instead). The streaming limiter counts those. ASGI gives header names in lower case."""
    length = None
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and not value.isdigit()):
            return None
        if name == b"content-length":
            length = int(value)
    return length


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
    # predict first: routes are matched in order, and the predict path is the hot one.
    for module in (predict, health, datasets, architectures, jobs, models, usage):
        app.include_router(module.router)
    if STATIC_DIR.is_dir():
        # Last, so that every API route matches first; "/" serves the dashboard's index.html.
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")
    return app


app = create_app()
