"""Serving: a byte-bounded cache of rebuilt models, micro-batched inference, inputs, exports.

Each app has one `Serving` (in `app.state.serving`, made on first use from `app.state.settings`
and `app.state.sessionmaker`). The functions here are what other routes and the app need:
`is_warm` for GET /v1/models/{id}, `drop_model` for DELETE, `warm_up` and `serving_ready` for the
lifespan and /readyz.
"""

from typing import Any

from app.serving.service import Serving


def get_serving(app: Any) -> Serving:
    """The app's serving state (`app` is the FastAPI app, e.g. `request.app`)."""
    serving = getattr(app.state, "serving", None)
    if serving is None:
        from app.db.engine import get_sessionmaker
        from app.settings import get_settings

        settings = getattr(app.state, "settings", None) or get_settings()
        session_factory = getattr(app.state, "sessionmaker", None) or get_sessionmaker()
        serving = app.state.serving = Serving(settings, session_factory)
    return serving


def is_warm(app: Any, model_id: str) -> bool:
    """Whether the model is rebuilt and cached (its next prediction needs no load)."""
    return get_serving(app).cache.is_warm(model_id)


def drop_model(app: Any, model_id: str) -> None:
    """Forget a deleted model, so its memory is freed and it can never answer again."""
    get_serving(app).cache.drop(model_id)


async def warm_up(app: Any) -> None:
    """Load FRESHNETS_WARMUP_MODELS now (the predict router's lifespan starts this)."""
    await get_serving(app).warm_up()


def serving_ready(app: Any) -> bool:
    """False until the warm-up models have been loaded (or have failed, logged)."""
    return get_serving(app).ready


__all__ = ["Serving", "drop_model", "get_serving", "is_warm", "serving_ready", "warm_up"]
