"""Turning validation failures into 422s that name the field, in FastAPI's own error shape."""

from collections.abc import Sequence
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.settings import Settings


def invalid(
    loc: Sequence[str | int], msg: str, kind: str = "value_error"
) -> RequestValidationError:
    """A 422 for one field, shaped like FastAPI's own: {"detail": [{"loc", "msg", "type"}]}."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": kind}])


def from_pydantic(
    exc: pydantic.ValidationError, prefix: Sequence[str | int]
) -> RequestValidationError:
    """Re-root a nested model's validation errors under `prefix` (e.g. body.architecture)."""
    errors: list[dict[str, Any]] = [
        {"loc": (*prefix, *err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    return RequestValidationError(errors)


def install(app: FastAPI, settings: Settings) -> None:
    """Handlers so that a validation error raised anywhere is a 422, and a 413 names its limit."""

    async def _pydantic(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, pydantic.ValidationError)
        return await request_validation_exception_handler(request, from_pydantic(exc, ("body",)))

    async def _http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 413 and exc.detail == "Content Too Large":  # the body limiter's own
            exc = StarletteHTTPException(
                413,
                f"body: over FRESHNETS_MAX_REQUEST_BYTES ({settings.max_request_bytes} bytes; "
                f"uploads: FRESHNETS_MAX_UPLOAD_BYTES, {settings.max_upload_bytes} bytes)",
            )
        return await http_exception_handler(request, exc)

    app.add_exception_handler(pydantic.ValidationError, _pydantic)
    app.add_exception_handler(StarletteHTTPException, _http)
