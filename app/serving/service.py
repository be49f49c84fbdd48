"""The serving layer of one app: its model cache, loads from the database, warm-up, predictions."""

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import freshcore
from app.db.models import Model, ModelBlob
from app.serving.batcher import MicroBatcher
from app.serving.cache import CacheEntry, ModelCache, model_nbytes
from app.serving.export import describe
from app.settings import Settings

log = logging.getLogger(__name__)


class ModelNotFound(KeyError):
    """No such model, or another owner's (the API answers 404 either way)."""


class ModelLoadError(RuntimeError):
    """The stored compact file could not be turned into a model."""


class Serving:
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self._sessionmaker = session_factory
        self.cache = ModelCache(settings.cache_bytes, self.load)
        self.warmed = False
        self.warmup_errors: dict[str, str] = {}
        self._warmup_task: asyncio.Task[None] | None = None
        # SHA-256 of an API key -> (owner id, trusted until): see routes/predict.py.
        self.recent_owners: dict[str, tuple[str, float]] = {}
        self.owner_lookups: dict[str, asyncio.Future[str]] = {}  # in flight, by key digest

    def load(self, model_id: str, owner_id: str | None = None) -> CacheEntry:
        """Database read, `freshcore.from_bytes`, filters rebuilt once: a ready entry (blocking).
        With `owner_id`, another owner's model is `ModelNotFound` before anything is built."""
        start = time.perf_counter()
        query = (
            select(Model.owner_id, ModelBlob.data)
            .join(ModelBlob, ModelBlob.model_id == Model.id)
            .where(Model.id == model_id)
        )
        if owner_id is not None:
            query = query.where(Model.owner_id == owner_id)
        with self._sessionmaker() as session:
            row = session.execute(query).one_or_none()
        if row is None:
            raise ModelNotFound(model_id)
        try:
            fresh = freshcore.from_bytes(
                row.data, max_virtual_weights=self.settings.max_virtual_weights
            )
        except ValueError as exc:
            raise ModelLoadError(
                f"model {model_id}: its stored file cannot be read: {exc}"
            ) from exc
        # The rebuild: every filter materialised once into a plain network with the same outputs.
        # Keeping it rather than the materialised FreshModel drops the hash indices, which at
        # serving time would only cost memory (about twice the dense weights on mnist-cnn).
        model = freshcore.to_dense(fresh.eval()).eval()
        info = describe(fresh)
        spec = fresh.spec

        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(x), dim=1)

        return CacheEntry(
            model_id=model_id,
            owner_id=row.owner_id,
            model=model,
            info=info,
            input_shape=tuple(spec.input_shape),
            num_classes=spec.num_classes,
            class_names=list(fresh.class_names) if fresh.class_names else None,
            nbytes=model_nbytes(model),
            load_seconds=time.perf_counter() - start,
            batcher=MicroBatcher(
                forward,
                max_size=self.settings.batch_max_size,
                max_wait_s=self.settings.batch_max_wait_ms / 1000,
                queue_limit=self.settings.batch_queue_limit,
            ),
        )

    async def model_for(self, model_id: str, owner_id: str) -> CacheEntry:
        """The ready model if `owner_id` owns it (else `ModelNotFound`), loading it if cold.
        A load reads only the owner's rows, so nobody warms another owner's model."""
        entry = await self.cache.get(model_id, owner_id)
        if entry.owner_id != owner_id:
            raise ModelNotFound(model_id)
        return entry

    async def warm_up(self) -> None:
        """Load `settings.warmup_models`; a failure is logged and kept in `warmup_errors`, so a
        wrong id cannot keep the service unready forever."""
        try:
            for model_id in self.settings.warmup_models:
                try:
                    entry = await self.cache.get(model_id)
                    log.info("warmed model %s in %.1f ms", model_id, 1000 * entry.load_seconds)
                except Exception as exc:
                    log.error("warm-up of model %s failed: %s", model_id, exc)
                    self.warmup_errors[model_id] = str(exc) or type(exc).__name__
        finally:
            self.warmed = True

    def start_warm_up(self) -> None:
        self._warmup_task = asyncio.get_running_loop().create_task(self.warm_up())

    async def stop(self) -> None:
        if self._warmup_task is not None and not self._warmup_task.done():
            self._warmup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmup_task
        self.cache.clear()

    @property
    def ready(self) -> bool:
        return self.warmed or not self.settings.warmup_models


def top_k(
    probabilities: torch.Tensor, class_names: list[str] | None, k: int
) -> list[dict[str, Any]]:
    """One prediction per row: the label, its class name, every probability and the k best."""
    probs = probabilities.float().numpy()
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    for row, best in zip(probs, order, strict=True):
        ranked = [
            {
                "label": int(i),
                "class_name": class_names[i] if class_names else None,
                "probability": float(row[i]),
            }
            for i in best
        ]
        out.append(
            {
                "label": ranked[0]["label"],
                "class_name": ranked[0]["class_name"],
                "probabilities": row.tolist(),
                "top_k": ranked,
            }
        )
    return out
