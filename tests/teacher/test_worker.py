"""Teacher jobs through real Celery workers: a dense job makes the teacher, a FreshNets job
starts from its projection and distils from it, and the model it registers is exactly what
freshcore trains for that recipe (and not what it trains without the teacher); the model is
served. A teacher that is gone or unreadable fails its job once, with the reason stored."""

import os
import signal
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import update

import freshcore
from app.db.models import Job, JobState, Model, ModelBlob

from ..owners import bearer
from .conftest import BACKENDS, store_model, train_like_the_worker

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled}
STUDENT = {"method": "freshnets", "compression": 1 / 8}


def probabilities(model: freshcore.FreshModel, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=1).numpy()


def run_job(stack: Any, client: TestClient, headers: dict[str, str], **body: Any) -> dict:
    made = client.post("/v1/jobs", headers=headers, json={"dataset": "digits", **body})
    assert made.status_code == 202, made.text
    job = stack.wait_state(made.json()["id"], FINAL, timeout_s=120)
    assert job.state == JobState.succeeded, f"{job.error}\n{stack.worker_logs()}"
    return client.get(f"/v1/jobs/{job.id}", headers=headers).json()


def test_dense_teacher_then_projected_distilled_student(worker_stack: Any) -> None:
    from app.main import create_app

    stack = worker_stack
    _, key = stack.owner_key()
    stack.start_worker("teacher")
    headers = bearer(key)
    data = freshcore.data.load("digits", cache_dir=stack.tmp / "data" / "cache")
    samples = data.x_test[:32]
    with TestClient(create_app()) as client:
        dense = run_job(
            stack, client, headers, architecture=stack.tiny_spec, method="dense",
            training={"epochs": 2, "batch_size": 32, "lr": 0.05},
        )  # fmt: skip
        assert (dense["teacher_model_id"], dense["init"]) == (None, "scratch")
        teacher_id = dense["model_id"]
        teacher_blob = client.get(f"/v1/models/{teacher_id}/file", headers=headers).content

        training = {"epochs": 1, "batch_size": 32, "lr": 0.05}
        job = run_job(
            stack, client, headers, architecture=stack.tiny_spec, teacher_model_id=teacher_id,
            init="project", training=training, **STUDENT,
        )  # fmt: skip
        assert (job["teacher_model_id"], job["init"]) == (teacher_id, "project")
        assert job["training"]["distill_alpha"] == 0.5
        blob = client.get(f"/v1/models/{job['model_id']}/file", headers=headers).content
        meta = freshcore.read_header(blob)["meta"]
        assert (meta["teacher_model_id"], meta["init"]) == (teacher_id, "project")
        assert meta["compressed_from"] == "dense"

        # Served: the student answers through the serving path.
        pred = client.post(
            f"/v1/models/{job['model_id']}/predict",
            headers=headers,
            json={"inputs": samples.tolist()},
        )
        assert pred.status_code == 200, pred.text
        served = np.array([p["probabilities"] for p in pred.json()["predictions"]])

    # What the worker made is freshcore's projection + distillation recipe, not a near miss.
    config = {**training, "distill_alpha": 0.5}
    recipe = train_like_the_worker(
        data, teacher_blob, **STUDENT, training=config, init="project", distil=True
    )
    np.testing.assert_allclose(served, probabilities(recipe, samples), atol=1e-4)
    for init, distil in (("project", False), ("scratch", True)):
        other = train_like_the_worker(
            data, teacher_blob, **STUDENT, training=config, init=init, distil=distil
        )
        gap = np.abs(served - probabilities(other, samples)).max()
        assert gap > 1e-3, f"init={init} distil={distil} trains the same model ({gap})"


@pytest.mark.parametrize("worker_stack", BACKENDS, indirect=True)
def test_projection_only_and_a_teacher_that_is_gone_or_unreadable(worker_stack: Any) -> None:
    """distill_alpha 0 + project: the untrained student is the projection (lr near 0 keeps it
    there). A deleted teacher and a corrupt teacher file each fail their job at once."""
    from app.db.engine import get_sessionmaker
    from app.jobs_queue import enqueue
    from app.settings import get_settings

    stack = worker_stack
    owner, _ = stack.owner_key()
    with get_sessionmaker()() as session:
        teacher, gone, corrupt = (store_model(session, owner) for _ in range(3))

    def queue(teacher_id: str, init: str, **training: Any) -> str:
        job_id = stack.insert_job(owner, epochs=1, send=False, training=training, **STUDENT)
        with get_sessionmaker()() as session:
            session.execute(
                update(Job).where(Job.id == job_id).values(teacher_model_id=teacher_id, init=init)
            )
            session.commit()
        return job_id

    projected = queue(teacher, "project", distill_alpha=0.0, lr=1e-9)
    deleted = queue(gone, "project")
    unreadable = queue(corrupt, "scratch")
    with get_sessionmaker()() as session:
        session.delete(session.get(ModelBlob, corrupt))
        session.add(ModelBlob(model_id=corrupt, data=b"not a safetensors file"))
        session.delete(session.get(Model, gone))  # bypassing the API's 409: a race it lost
        session.commit()
    for job_id in (projected, deleted, unreadable):
        assert enqueue(get_settings(), job_id)
    stack.start_worker("failures")

    failed = {job_id: stack.wait_state(job_id, FINAL, 90) for job_id in (deleted, unreadable)}
    for job in failed.values():
        assert job.state == JobState.failed and job.attempts == 1, job.error
    assert failed[deleted].teacher_model_id is None
    assert "teacher model is gone" in failed[deleted].error
    assert f"teacher model {corrupt} cannot be read" in failed[unreadable].error

    job = stack.wait_state(projected, FINAL, 90)
    assert job.state == JobState.succeeded, job.error
    (model,) = stack.models_for(projected)
    with get_sessionmaker()() as session:
        student = freshcore.from_bytes(session.get(ModelBlob, model.id).data)
        teacher_model = freshcore.from_bytes(session.get(ModelBlob, teacher).data)
    projection = freshcore.compress_dense(teacher_model, "freshnets", 1 / 8, 0)
    for name, value in projection.state_dict().items():
        if not name.startswith("input_"):  # the normalisation comes from the data set
            torch.testing.assert_close(student.state_dict()[name], value, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_killed_projected_job_resumes_to_the_same_model(worker_stack: Any) -> None:
    """Killed after its first checkpoint, the job resumes on another worker from that
    checkpoint (not from a fresh projection) and ends with the uninterrupted run's model."""
    from app.db.engine import get_sessionmaker
    from app.jobs_queue import enqueue
    from app.settings import get_settings

    stack = worker_stack
    owner, _ = stack.owner_key()
    with get_sessionmaker()() as session:
        teacher = store_model(session, owner)
        teacher_blob = session.get(ModelBlob, teacher).data
    training = {"epochs": 3, "batch_size": 8, "lr": 0.02}
    job_id = stack.insert_job(
        owner, epochs=3, batch_size=8, training={"lr": 0.02}, send=False, **STUDENT
    )
    with get_sessionmaker()() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(teacher_model_id=teacher, init="project")
        )
        session.commit()
    first = stack.start_worker("first")
    assert enqueue(get_settings(), job_id)
    stack.wait_first_checkpoint(job_id)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = datetime.now(UTC)
    resumed_after = stack.checkpoint_epoch(job_id)
    assert stack.job(job_id).state == JobState.running, "finished before the kill"

    stack.start_worker("second")
    job = stack.wait_state(job_id, FINAL, timeout_s=120)
    assert job.state == JobState.succeeded and job.attempts == 2, job.error
    for row in stack.metric_rows(job_id):  # the epochs before the kill were not trained again
        assert (row.created_at < killed_at) == (row.epoch <= resumed_after), row.epoch
    (model,) = stack.models_for(job_id)
    with get_sessionmaker()() as session:
        trained = freshcore.from_bytes(session.get(ModelBlob, model.id).data)

    data = freshcore.data.load("digits", cache_dir=stack.tmp / "data" / "cache")
    config = {**training, "distill_alpha": 0.5}
    recipe = train_like_the_worker(
        data, teacher_blob, **STUDENT, training=config, init="project", distil=True
    )
    samples = data.x_test[:32]
    np.testing.assert_allclose(
        probabilities(trained, samples), probabilities(recipe, samples), atol=1e-4
    )
