"""Predictions and exports of a trained model, served by app.serving (cache + micro-batcher)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio.to_thread
import pydantic
import torch
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from app.api import errors
from app.api.deps import _bearer, get_current_owner
from app.security import hash_key
from app.serving import get_serving
from app.serving.batcher import QueueFull
from app.serving.cache import CacheEntry
from app.serving.export import MEDIA_TYPES, ExportFormat, export
from app.serving.inputs import InputError, from_base64, from_images, from_lists
from app.serving.service import ModelLoadError, ModelNotFound, top_k


@asynccontextmanager
async def _serving_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading FRESHNETS_WARMUP_MODELS in the background; /readyz waits for it."""
    serving = get_serving(app)
    if serving.settings.torch_threads > 0:  # the forwards' intra-op threads in this process
        torch.set_num_threads(serving.settings.torch_threads)
    serving.start_warm_up()
    yield
    await serving.stop()


router = APIRouter(tags=["models"], lifespan=_serving_lifespan)


# A key checked this recently is trusted without a database read: a revoked key can still
# predict for at most this long, and the hot path skips a thread hop and a query per request.
OWNER_TTL_S = 2.0
_OWNER_MEMO_MAX = 10_000


def _lookup_owner(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """deps.get_current_owner's checks (401s included) in a session closed at once: the
    request's own session would hold a database connection while it waits in the batcher."""
    with request.app.state.sessionmaker() as session:
        return get_current_owner(session, credentials).id


async def _owner_id(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    serving = get_serving(request.app)
    memo = serving.recent_owners
    if credentials is None or credentials.scheme.lower() != "bearer":
        return await anyio.to_thread.run_sync(_lookup_owner, request, credentials)  # its 401
    digest = hash_key(credentials.credentials)
    hit = memo.get(digest)
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    # One lookup per key at a time: when a busy key's memo expires, the requests arriving
    # meanwhile share it instead of each taking a worker thread (the forwards' pool) and a query.
    lookups = serving.owner_lookups
    task = lookups.get(digest)
    if task is None or task.get_loop() is not asyncio.get_running_loop():
        task = asyncio.ensure_future(anyio.to_thread.run_sync(_lookup_owner, request, credentials))
        lookups[digest] = task
        task.add_done_callback(lambda t: lookups.pop(digest) if lookups.get(digest) is t else None)
    owner_id = await asyncio.shield(task)
    if len(memo) >= _OWNER_MEMO_MAX:
        memo.clear()
    memo[digest] = (owner_id, time.monotonic() + OWNER_TTL_S)
    return owner_id


OwnerId = Annotated[str, Depends(_owner_id)]

DEFAULT_K = 5
# Bodies above this are parsed in a worker thread rather than on the event loop.
_PARSE_IN_THREAD_BYTES = 256 * 1024


class PredictRequest(BaseModel):
    """Samples as nested lists (`inputs`) or as base64 of raw little-endian bytes
    (`inputs_b64` + `dtype` + `shape`). Images go as multipart/form-data files instead."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = Field(
        None,
        description="One sample (C, H, W) or (H, W) for one-channel models, or a batch "
        "(N, C, H, W) / (N, H, W), as nested lists of numbers.",
    )
    inputs_b64: str | None = Field(
        None, description="Base64 of raw little-endian float32 or uint8 values, C order."
    )
    dtype: Literal["float32", "uint8"] | None = Field(
        None, description="The element type of `inputs_b64`."
    )
    shape: list[int] | None = Field(
        None, max_length=4, description="The shape of `inputs_b64`, one of the shapes above."
    )
    scale: Literal["unit", "byte"] | None = Field(
        None,
        description='"unit": values in [0, 1] (the default, and for float32 base64); '
        '"byte": 0..255 pixel values (the default for uint8 base64). The model normalises '
        "inside, so nothing else is needed.",
    )
    k: int | None = Field(
        None, ge=1, le=1000, description="How many best classes to list (default 5)."
    )


class TopK(BaseModel):
    label: int
    class_name: str | None
    probability: float


class Prediction(BaseModel):
    label: int = Field(description="The most probable class index.")
    class_name: str | None = Field(description="Its name, when the data set names classes.")
    probabilities: list[float] = Field(description="Softmax probabilities of every class.")
    top_k: list[TopK]


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[Prediction]


_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "PNG, JPEG, WebP, BMP or GIF files, one sample each; "
                        "converted to the model's channels and size.",
                    },
                    "k": {"type": "integer", "minimum": 1},
                },
                "required": ["images"],
            }
        },
    },
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An undecodable body or image."},
    404: {"description": "No such model (or another owner's)."},
    413: {"description": "A batch over FRESHNETS_MAX_BATCH or an image over the pixel limit."},
    503: {"description": "The model's queue is full: retry after `Retry-After` seconds."},
}


# The hot route reads its key and `k`/`top_k` itself (`_bearer`, `_owner_id`, `_query_k`) rather
# than through Depends and Query: FastAPI's per-request solving of those cost more CPU than the
# rest of the route with one sample a request. The OpenAPI document says what they would have.
_K_PARAMETERS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
        "description": description,
    }
    for name, description in (("k", "Best classes to list."), ("top_k", "Same as `k`."))
]


def _query_k(request: Request) -> int | None:
    """`?k=` (or `?top_k=`), checked as the Query parameters were: an integer in [1, 1000]."""
    if not request.scope.get("query_string"):
        return None
    params = request.query_params
    found: list[int] = []
    for name in ("k", "top_k"):
        value = params.get(name)
        if value is None:
            continue
        try:
            k = int(value)
        except ValueError:
            raise errors.invalid(("query", name), f"{name} must be an integer") from None
        if not 1 <= k <= 1000:
            raise errors.invalid(("query", name), f"{name} must be between 1 and 1000")
        found.append(k)
    return found[0] if found else None


def _input_error(exc: InputError) -> Exception:
    if exc.status == 422:
        return errors.invalid(("body", exc.field), exc.message)
    return HTTPException(exc.status, str(exc))


async def _entry(request: Request, model_id: str, owner_id: str) -> CacheEntry:
    try:
        return await get_serving(request.app).model_for(model_id, owner_id)
    except ModelNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model: no model {model_id!r}") from None
    except ModelLoadError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from None


def _parse_json(body: bytes, entry: CacheEntry, max_batch: int) -> tuple[Any, int | None]:
    """The request's batch (N, C, H, W) in [0, 1] and its `k`, or an exception to raise."""
    try:
        req = PredictRequest.model_validate_json(body)
    except pydantic.ValidationError as exc:
        return errors.from_pydantic(exc, ("body",)), None
    scale = req.scale or "unit"
    try:
        if req.inputs is not None and req.inputs_b64 is None:
            x = from_lists(req.inputs, scale, entry.input_shape, max_batch)
        elif req.inputs_b64 is not None and req.inputs is None:
            if req.dtype is None or req.shape is None:
                return errors.invalid(("body",), "inputs_b64 needs `dtype` and `shape`"), None
            x = from_base64(
                req.inputs_b64, req.dtype, req.shape, req.scale, entry.input_shape, max_batch
            )
        else:
            return errors.invalid(("body",), "give exactly one of `inputs` or `inputs_b64`"), None
    except InputError as exc:
        return _input_error(exc), None
    return x, req.k


async def _parse_multipart(
    request: Request, entry: CacheEntry, max_batch: int, max_pixels: int
) -> tuple[Any, int | None]:
    try:
        form = await request.form(max_files=max_batch + 1, max_fields=16)
    except Exception as exc:  # malformed multipart: the parser's own message
        message = getattr(exc, "detail", None) or str(exc)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"body: {message}") from None
    files: list[tuple[str, bytes]] = []
    k: int | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((f"images[{len(files)}] ({value.filename})", await value.read()))
        elif key == "k":
            try:
                k = int(value)
            except ValueError:
                raise errors.invalid(("body", "k"), "k must be an integer") from None
            if not 1 <= k <= 1000:
                raise errors.invalid(("body", "k"), "k must be between 1 and 1000")
    await form.close()
    try:
        x = await anyio.to_thread.run_sync(
            from_images, files, entry.input_shape, max_pixels, max_batch
        )
    except InputError as exc:
        raise _input_error(exc) from None
    return x, k


class _PlainRoute(APIRoute):
    """Calls its endpoint with the path parameters and the request as they come, skipping
    FastAPI's per-request solving of parameters (the hot route's largest cost in FastAPI, with
    nothing left to solve); its OpenAPI entry is the route's as declared."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request=request, **request.path_params)

        return handler


async def predict(model_id: str, request: Request) -> Response:
    """Class probabilities and the k best classes for one sample or a batch.

    The first call loads the model (database read, rebuild of its filters, kept in the cache);
    concurrent calls are answered together by one forward pass (micro-batching)."""
    owner_id = await _owner_id(request, await _bearer(request))
    query_k = _query_k(request)
    serving = get_serving(request.app)
    settings = serving.settings
    entry = await _entry(request, model_id, owner_id)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        x, body_k = await _parse_multipart(
            request, entry, settings.max_batch, settings.max_image_pixels
        )
    else:
        body = await request.body()
        if len(body) > _PARSE_IN_THREAD_BYTES:
            x, body_k = await anyio.to_thread.run_sync(_parse_json, body, entry, settings.max_batch)
        else:
            x, body_k = _parse_json(body, entry, settings.max_batch)
        if isinstance(x, Exception):
            raise x
    try:
        probabilities = await entry.batcher.submit(x)
    except QueueFull as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"model {model_id}: {exc}; retry later",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    predictions = top_k(probabilities, entry.class_names, query_k or body_k or DEFAULT_K)
    return Response(
        json.dumps({"model_id": model_id, "predictions": predictions}),
        media_type="application/json",
    )


router.add_api_route(
    "/v1/models/{model_id}/predict",
    predict,
    methods=["POST"],
    response_model=PredictResponse,
    openapi_extra={
        "requestBody": _PREDICT_BODY,
        "parameters": _K_PARAMETERS,
        "security": [{_bearer.scheme_name: []}],
    },
    responses=_ERRORS,
    route_class_override=_PlainRoute,
)


@router.get(
    "/v1/models/{model_id}/export",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "content": {"application/onnx": {}, "application/octet-stream": {}},
            "description": "The dense network: float32 (N, C, H, W) in [0, 1] in, logits out.",
        },
    },
)
async def export_model(
    model_id: str,
    request: Request,
    owner_id: OwnerId,
    fmt: Annotated[ExportFormat, Query(alias="format")] = "onnx",
) -> Response:
    """The rebuilt dense network as ONNX, TorchScript or a safetensors state dict."""
    entry = await _entry(request, model_id, owner_id)
    data = await anyio.to_thread.run_sync(export, entry.model, entry.info, fmt)
    media_type, suffix = MEDIA_TYPES[fmt]
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="freshnets-{model_id}.{suffix}"'},
    )
