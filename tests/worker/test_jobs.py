"""Real jobs through a real Redis, real Celery worker processes and a real database."""

import resource
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.models import JobState

from ..owners import bearer

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled}
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.slow
@pytest.mark.parametrize("stack", BACKENDS, indirect=True)
def test_end_to_end_through_the_api(stack: Any) -> None:
    """POST a job, poll its metrics while it runs, see the model registered, predict with it."""
    from app.main import create_app

    _, key = stack.owner_key()
    stack.start_worker("e2e")
    headers = bearer(key)
    with TestClient(create_app()) as client:
        epochs = 4
        body = stack.digits_job(training={"epochs": epochs, "batch_size": 16, "lr": 0.05})
        body["name"] = "digits, 4 epochs"
        resp = client.post("/v1/jobs", headers=headers, json=body)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        assert resp.headers["location"] == f"/v1/jobs/{job_id}"

        # Poll as the dashboard does: only the epochs after the last one seen.
        seen: list[int] = []
        states: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = seen[-1] if seen else -1
            page = client.get(f"/v1/jobs/{job_id}/metrics?after={after}", headers=headers)
            assert page.status_code == 200, page.text
            body = page.json()
            states.add(body["state"])
            seen += [item["epoch"] for item in body["items"]]
            if body["state"] in FINAL:
                break
            time.sleep(0.1)
        assert body["state"] == "succeeded", stack.worker_logs()
        assert "running" in states  # metrics were polled while it ran
        assert seen == list(range(1, epochs + 1))  # each epoch once, in order
        # Its heart beat all along: the reconciler never took the running job for a dead one.
        assert "re-queued" not in stack.worker_logs()

        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        assert job["progress"] == 1.0 and job["epoch"] == epochs and job["attempts"] == 1
        assert job["model_id"]
        model = client.get(f"/v1/models/{job['model_id']}", headers=headers).json()
        assert model["job_id"] == job_id and model["dataset"] == "digits"
        assert model["name"] == job["name"] == "digits, 4 epochs"  # the job's label
        assert model["method"] == "freshnets"
        assert 0 < model["stored_parameters"] < model["virtual_parameters"]
        assert model["compact_bytes"] < model["dense_bytes"]
        assert model["test_accuracy"] > 0.5  # digits, 4 epochs: far above chance (0.1)

        import freshcore

        data = freshcore.data.load("digits", cache_dir=stack.tmp / "data" / "cache")
        samples = data.x_test[:3]
        pred = client.post(
            f"/v1/models/{job['model_id']}/predict",
            headers=headers,
            json={"inputs": samples.tolist()},
        )
        assert pred.status_code == 200, pred.text
        predictions = pred.json()["predictions"]
        assert len(predictions) == 3
        for p in predictions:
            assert len(p["probabilities"]) == 10
            assert abs(sum(p["probabilities"]) - 1) < 1e-4
        file = client.get(f"/v1/models/{job['model_id']}/file", headers=headers)
        assert file.status_code == 200 and len(file.content) == model["compact_bytes"]


@pytest.mark.slow
def test_progress_moves_within_the_first_epoch(stack: Any) -> None:
    """on_batch writes the progress fraction during an epoch (throttled): polled while epoch 1
    runs, it lies strictly between 0 and 1/epochs; it never goes back and ends at 1."""
    owner, _ = stack.owner_key()
    epochs = 2
    # Batches of 1: over 1,000 steps, seconds per epoch, so epoch 1 outlasts the 1 s throttle.
    job_id = stack.insert_job(owner, epochs=epochs, batch_size=1, training={"lr": 0.01})
    stack.start_worker("progress")
    seen: list[tuple[int, float]] = []  # (epoch done, progress) while running
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job = stack.job(job_id)
        if job.state in FINAL:
            break
        if job.state == JobState.running:
            seen.append((job.epoch, job.progress))
        time.sleep(0.02)
    assert job.state == JobState.succeeded, f"{job.error}\n{stack.worker_logs()}"
    assert job.progress == 1.0
    during_first = [p for epoch, p in seen if epoch == 0]
    assert any(0 < p < 1 / epochs for p in during_first), during_first
    progress = [p for _, p in seen]
    assert progress == sorted(progress), progress  # never backwards


@pytest.mark.slow
def test_failures_end_failed_with_a_reason(stack: Any) -> None:
    """A missing data set, a diverging loss, a model that cannot be built: failed, and why."""
    owner, _ = stack.owner_key()
    missing = stack.insert_job(owner, epochs=1, send=False)
    diverges = stack.insert_job(owner, epochs=2, training={"lr": 1e12, "momentum": 0.0})
    unbuildable = stack.insert_job(owner, epochs=1, method="no-such-method")
    from app.db.engine import get_sessionmaker
    from app.db.models import Job
    from app.jobs_queue import enqueue
    from app.settings import get_settings

    absent = stack.insert_job(owner, epochs=1, send=False)
    with get_sessionmaker()() as session:
        session.get(Job, missing).dataset = "no-such-dataset"
        session.get(Job, absent).dataset = "mnist"  # known, but not in this worker's cache
        session.commit()
    enqueue(get_settings(), missing)
    enqueue(get_settings(), absent)
    stack.start_worker("fail")

    job = stack.wait_state(missing, FINAL)
    assert (
        job.state == JobState.failed and "no-such-dataset" in job.error and "not found" in job.error
    )
    job = stack.wait_state(absent, FINAL)
    assert job.state == JobState.failed, job.error
    assert "not on this worker" in job.error and "freshnets datasets fetch mnist" in job.error
    job = stack.wait_state(diverges, FINAL)
    assert job.state == JobState.failed and "diverged" in job.error, job.error
    job = stack.wait_state(unbuildable, FINAL)
    assert job.state == JobState.failed and "no-such-method" in job.error, job.error
    for job_id in (missing, absent, diverges, unbuildable):
        assert stack.models_for(job_id) == []
        assert stack.checkpoint_epoch(job_id) is None
        assert stack.job(job_id).finished_at is not None


@pytest.mark.slow
def test_one_worker_two_processes_trains_two_jobs_at_once(stack: Any) -> None:
    """`freshnets worker --concurrency 2`: prefork children, one job each, at the same time."""
    owner, _ = stack.owner_key()
    proc = stack.start_worker("pair", wait=False, cli=True, concurrency=2)
    jobs = [
        stack.insert_job(owner, epochs=2, batch_size=8, training={"lr": 0.02}) for _ in range(2)
    ]
    stack.wait_ready(proc)
    done = [stack.wait_state(job_id, FINAL, timeout_s=90) for job_id in jobs]
    assert [j.state for j in done] == [JobState.succeeded] * 2, [j.error for j in done]
    # Two processes: each job claimed by its own pid, and their runs overlap in time.
    assert done[0].worker != done[1].worker
    first, second = sorted(done, key=lambda j: j.started_at)
    assert second.started_at < first.finished_at, "the jobs ran one after the other"
    for job_id in jobs:
        assert len(stack.models_for(job_id)) == 1


@pytest.mark.slow
def test_uploaded_data_set_trains_from_the_database(stack: Any) -> None:
    """An .npz uploaded through the API travels in the database to the worker, which caches it
    by SHA-256 and trains on it; the model knows the class names."""
    import hashlib
    import io

    import numpy as np

    from app.main import create_app

    rng = np.random.default_rng(0)
    n, classes = 240, ["left", "middle", "right"]
    y = np.arange(n) % 3
    x = rng.integers(0, 40, size=(n, 10, 10), dtype=np.uint8)
    for i, label in enumerate(y):  # a bright bar whose place is the class
        x[i, :, 1 + 3 * label : 3 + 3 * label] = 250
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, classes=np.array(classes))
    blob = buf.getvalue()

    _, key = stack.owner_key()
    headers = bearer(key)
    worker = stack.start_worker("upload", wait=False)
    with TestClient(create_app()) as client:
        resp = client.post("/v1/datasets", headers=headers, files={"file": ("bars.npz", blob)})
        assert resp.status_code == 201, resp.text
        dataset_id = resp.json()["id"]
        spec = {
            "input_shape": [1, 10, 10],
            "num_classes": 3,
            "layers": [
                {"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": 1},
                {"type": "relu"},
                {"type": "pool", "kind": "max", "kernel_size": 2},
                {"type": "flatten"},
                {"type": "fc", "out_features": 3},
            ],
        }
        resp = client.post(
            "/v1/jobs",
            headers=headers,
            json={
                "dataset": dataset_id,
                "architecture": spec,
                "method": "hashednets",
                "compression": 0.5,
                "training": {"epochs": 3, "batch_size": 16, "lr": 0.05},
            },
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        stack.wait_ready(worker)
        job = stack.wait_state(job_id, FINAL)
        assert job.state == JobState.succeeded, job.error
        sha = hashlib.sha256(blob).hexdigest()
        assert (stack.tmp / "data" / "cache" / "uploads" / f"{sha}.npz").read_bytes() == blob

        model_id = client.get(f"/v1/jobs/{job_id}", headers=headers).json()["model_id"]
        model = client.get(f"/v1/models/{model_id}", headers=headers).json()
        assert model["dataset"] == dataset_id and model["test_accuracy"] > 0.9
        sample = x[:3].astype(np.float32)[:, None] / 255.0
        pred = client.post(
            f"/v1/models/{model_id}/predict", headers=headers, json={"inputs": sample.tolist()}
        )
        assert pred.status_code == 200, pred.text
        names = [p["class_name"] for p in pred.json()["predictions"]]
        assert names == [classes[label] for label in y[:3]]


def _vm_data(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmData:")[1].split()[0]) * 1024


@pytest.mark.slow
def test_out_of_memory_fails_the_job_and_the_worker_goes_on(stack: Any) -> None:
    """A real allocation failure: the worker's data segment is capped (RLIMIT_DATA), then a
    dense model of about 120 MB of weights (and as much again for gradients and momentum)."""
    owner, _ = stack.owner_key()
    proc = stack.start_worker("oom", wait=False)
    warm = stack.insert_job(owner, epochs=1)  # imports and data loaded before the cap
    stack.wait_ready(proc)
    assert stack.wait_state(warm, FINAL).state == JobState.succeeded

    cap = _vm_data(proc.pid) + 200 * 1024 * 1024
    # A soft cap only: the hard limit stays, so the cap can be lifted again.
    resource.prlimit(proc.pid, resource.RLIMIT_DATA, (cap, resource.RLIM_INFINITY))
    big = {
        "name": "too-big",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "layers": [
            {"type": "flatten"},
            {"type": "fc", "out_features": 400_000},
            {"type": "relu"},
            {"type": "fc", "out_features": 10},
        ],
    }
    job_id = stack.insert_job(owner, epochs=1, spec=big, method="dense", compression=1.0)
    job = stack.wait_state(job_id, FINAL)
    assert job.state == JobState.failed
    assert job.error.startswith("out of memory"), job.error
    assert "smaller batch size" in job.error

    # The worker survived it and trains the next job.
    resource.prlimit(proc.pid, resource.RLIMIT_DATA, (resource.RLIM_INFINITY,) * 2)
    after = stack.insert_job(owner, epochs=1)
    assert stack.wait_state(after, FINAL).state == JobState.succeeded
