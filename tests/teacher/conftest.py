"""Teacher jobs (distillation, projection) on the real parts the other folders already set up:
tests/service's API fixtures (a migrated database, TestClient, keys for alice and bob; the broker
down, so a job stays queued), tests/worker's per-test stack (Redis, Celery worker processes) as
``worker_stack``, and tests/conftest.py's ``stack`` (uvicorn + worker) for the CLI and browser.
Plus helpers that store a model as the worker does, and train the way the worker trains."""

from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session

import freshcore
from app.db.models import Job, JobState, Model, ModelBlob, utcnow
from freshcore import data as fdata

from ..cli.conftest import cli  # noqa: F401
from ..service.conftest import (  # noqa: F401
    alice,
    bob,
    client,
    closed_redis_url,
    database_url,
    make_client,
    make_settings,
    postgres_url,
    sqlite_template,
)
from ..worker.conftest import TINY_SPEC, redis_url  # noqa: F401
from ..worker.conftest import stack as worker_stack  # noqa: F401

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def spec_with(**changes: Any) -> dict[str, Any]:
    """TINY_SPEC (digits: 1x8x8, 10 classes) with top-level fields or layers changed."""
    spec = {**TINY_SPEC, "layers": [dict(layer) for layer in TINY_SPEC["layers"]]}
    for key, value in changes.items():
        if key.startswith("layer"):
            spec["layers"][int(key[5:])].update(value)
        else:
            spec[key] = value
    return spec


def store_model(
    session: Session,
    owner_id: str,
    *,
    method: str = "dense",
    spec: dict[str, Any] | None = None,
    compression: float = 1.0,
) -> str:
    """A finished job and its model (untrained weights, real file), as the worker stores them."""
    resolved = freshcore.resolve_spec(spec or TINY_SPEC)
    model = freshcore.build_model(resolved, method, compression)
    blob = freshcore.to_bytes(model)
    report = freshcore.size_report(model)
    job = Job(
        owner_id=owner_id, dataset="digits", architecture_name=resolved.name,
        architecture=resolved.model_dump(mode="json"), method=method, compression=compression,
        training={"epochs": 1}, state=JobState.succeeded, total_epochs=1, finished_at=utcnow(),
    )  # fmt: skip
    session.add(job)
    session.flush()
    row = Model(
        owner_id=owner_id, job_id=job.id, dataset="digits", architecture_name=resolved.name,
        method=method, compression_requested=compression, compression_achieved=report.ratio,
        stored_parameters=report.stored_parameters, virtual_parameters=report.virtual_weights,
        compact_bytes=len(blob), dense_bytes=report.dense_bytes, size_report=report.to_dict(),
    )  # fmt: skip
    session.add(row)
    session.flush()
    session.add(ModelBlob(model_id=row.id, data=blob))
    session.commit()
    return row.id


def train_like_the_worker(
    data: fdata.Dataset,
    teacher_blob: bytes,
    *,
    method: str,
    compression: float,
    training: dict[str, Any],
    init: str,
    distil: bool,
    seed: int = 0,
) -> freshcore.FreshModel:
    """What the worker trains for such a job, here in this process on one CPU thread (the worker
    runs with FRESHNETS_TORCH_THREADS=1): the same model file, to within float noise."""
    teacher = freshcore.from_bytes(teacher_blob)
    if init == "project":
        model = freshcore.compress_dense(teacher, method, compression, seed)
    else:
        model = freshcore.build_model(teacher.spec, method, compression, seed)
    config = freshcore.TrainConfig.from_dict({"seed": seed, **training, "device": "cpu"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        freshcore.train(model, data, config, teacher=teacher if distil else None)
    finally:
        torch.set_num_threads(threads)
    return model
