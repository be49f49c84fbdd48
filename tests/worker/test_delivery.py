"""Delivery under trouble: a worker killed mid-job, lost and duplicate messages, a cancel."""

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.db.models import JobState

from ..owners import bearer

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled}
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _naive_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without their zone (they are stored as UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


@pytest.mark.slow
@pytest.mark.parametrize("stack", BACKENDS, indirect=True)
def test_killed_worker_job_resumes_on_another_worker(stack: Any) -> None:
    owner, _ = stack.owner_key()
    first = stack.start_worker("first", wait=False)
    epochs = 4
    # Small batches: most of a second per epoch, so the kill lands mid-job.
    job_id = stack.insert_job(owner, epochs=epochs, batch_size=8, training={"lr": 0.02})
    stack.wait_ready(first)

    stack.wait_first_checkpoint(job_id)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = datetime.now(UTC).replace(tzinfo=None)
    resumed_after = stack.checkpoint_epoch(job_id)
    job = stack.job(job_id)
    assert job.state == JobState.running and resumed_after < epochs, "finished before the kill"
    assert job.attempts == 1

    stack.start_worker("second", wait=False, cli=True)  # `freshnets worker`
    job = stack.wait_state(job_id, FINAL, timeout_s=90)
    assert job.state == JobState.succeeded, job.error
    assert job.attempts == 2  # claimed once by each worker
    assert job.epoch == epochs and job.progress == 1.0
    assert len(stack.models_for(job_id)) == 1
    assert stack.checkpoint_epoch(job_id) is None  # dropped once the model is in

    rows = stack.metric_rows(job_id)
    assert [r.epoch for r in rows] == list(range(1, epochs + 1))
    for row in rows:
        written = _naive_utc(row.created_at)
        if row.epoch <= resumed_after:
            assert written < killed_at, f"epoch {row.epoch} was trained again after the kill"
        else:
            assert written > killed_at, f"epoch {row.epoch} predates the resume"
    assert "claimed by" in stack.worker_logs()


@pytest.mark.slow
@pytest.mark.parametrize("stack", BACKENDS, indirect=True)
def test_lost_and_duplicate_messages(stack: Any) -> None:
    """A queued job whose message Redis lost is re-queued by the reconciler; a job sent three
    times is trained once."""
    owner, _ = stack.owner_key()
    lost = stack.insert_job(owner, epochs=1, age_s=60)
    with redis.Redis.from_url(stack.redis_url) as client:
        client.flushall()  # Redis restarted empty
        assert client.llen("celery") == 0
    duplicated = stack.insert_job(owner, epochs=1)
    from app.jobs_queue import enqueue
    from app.settings import get_settings

    assert enqueue(get_settings(), duplicated) and enqueue(get_settings(), duplicated)

    stack.start_worker("reconciler")
    for job_id in (lost, duplicated):
        job = stack.wait_state(job_id, FINAL)
        assert job.state == JobState.succeeded, job.error
        assert job.attempts == 1
        assert len(stack.models_for(job_id)) == 1
    # The duplicates were skipped, not trained: they leave the queue empty and the job alone.
    with redis.Redis.from_url(stack.redis_url) as client:
        deadline = time.monotonic() + 20
        while client.llen("celery") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.llen("celery") == 0
    assert stack.job(duplicated).attempts == 1
    assert "re-queued" in stack.worker_logs()


@pytest.mark.slow
def test_cancel_stops_a_running_job_between_batches(stack: Any) -> None:
    from app.main import create_app

    owner, key = stack.owner_key()
    stack.start_worker("cancel")
    epochs = 50
    job_id = stack.insert_job(owner, epochs=epochs, batch_size=4, training={"lr": 0.01})
    stack.wait_state(job_id, {JobState.running})
    deadline = time.monotonic() + 60
    while not stack.metric_rows(job_id):
        assert time.monotonic() < deadline, stack.worker_logs()
        time.sleep(0.05)

    with TestClient(create_app()) as client:
        resp = client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))
        assert resp.status_code == 200, resp.text
    asked = time.monotonic()
    job = stack.wait_state(job_id, FINAL, timeout_s=30)
    stopped_in = time.monotonic() - asked
    assert job.state == JobState.cancelled, job.error
    # Stopped between batches, not at the end of an epoch (an epoch here takes about a second),
    # and far from the end of the run.
    assert job.epoch < epochs
    assert stopped_in < 10, f"took {stopped_in:.1f} s to stop"
    assert job.finished_at is not None
    assert stack.models_for(job_id) == []
    assert stack.checkpoint_epoch(job_id) is None


def test_reconcile_sends_only_what_is_missing(stack: Any) -> None:
    """In-process: a waiting message counts, and so does one a worker has just taken; a lost
    message, one a worker took long ago, or a dead worker's job is sent again."""
    from app.db.engine import get_sessionmaker
    from app.db.models import Job, utcnow
    from worker.celery_app import make_celery
    from worker.reconcile import reconcile, waiting_job_ids

    app = make_celery()  # on this test's Redis
    owner, _ = stack.owner_key()
    waiting = stack.insert_job(owner, epochs=1, age_s=60)
    lost = stack.insert_job(owner, epochs=1, age_s=60, send=False)
    # Made a moment ago: the API may be between its commit and its send; left alone.
    stack.insert_job(owner, epochs=1, send=False)
    dead = stack.insert_job(owner, epochs=1, age_s=60, send=False)
    alive = stack.insert_job(owner, epochs=1, age_s=60, send=False)
    just_taken = stack.insert_job(owner, epochs=1, age_s=60, send=False)
    taken_long_ago = stack.insert_job(owner, epochs=1, age_s=60, send=False)
    with get_sessionmaker()() as session:
        for job_id, beat_age in ((dead, 3600), (alive, 0)):
            job = session.get(Job, job_id)
            job.state, job.worker = JobState.running, "elsewhere:1"
            job.heartbeat_at = utcnow() - timedelta(seconds=beat_age)
        session.commit()
    with redis.Redis.from_url(stack.redis_url) as client:
        # As kombu keeps a message a worker has taken: the message, and when it was taken.
        for tag, job_id, age in (("t1", just_taken, 0), ("t2", taken_long_ago, 3600)):
            raw = json.dumps([{"headers": {"id": job_id}, "body": ""}, "", "celery"])
            client.hset("unacked", tag, raw)
            client.zadd("unacked_index", {tag: time.time() - age})

    assert sorted(reconcile(app)) == sorted([lost, dead, taken_long_ago])
    with redis.Redis.from_url(stack.redis_url) as client:
        assert waiting_job_ids(client, "celery") == {waiting, lost, dead, taken_long_ago}
    assert reconcile(app) == []  # their messages now wait: nothing more to send


@pytest.mark.slow
def test_stopped_worker_hands_its_job_back(stack: Any) -> None:
    """SIGTERM (a warm shutdown) mid-job: the job goes back to the queue with its checkpoint and
    the next worker resumes it."""
    from worker.reconcile import waiting_job_ids

    owner, _ = stack.owner_key()
    first = stack.start_worker("polite", wait=False)
    epochs = 4
    job_id = stack.insert_job(owner, epochs=epochs, batch_size=8, training={"lr": 0.02})
    stack.wait_ready(first)
    stack.wait_first_checkpoint(job_id)
    asked = time.monotonic()
    os.kill(first.pid, signal.SIGTERM)
    first.wait(timeout=60)
    assert time.monotonic() - asked < 20, "the worker did not stop between batches"

    job = stack.job(job_id)
    assert job.state == JobState.queued, f"{job.state}: finished before the stop?"
    assert job.worker is None and job.attempts == 1
    kept = stack.checkpoint_epoch(job_id)
    assert kept is not None and kept < epochs
    with redis.Redis.from_url(stack.redis_url) as client:
        assert job_id in waiting_job_ids(client, "celery")  # its message is back in the queue
    assert "handed back" in stack.worker_logs()

    stack.start_worker("next", wait=False)
    job = stack.wait_state(job_id, FINAL)
    assert job.state == JobState.succeeded, job.error
    assert job.attempts == 2
    assert [r.epoch for r in stack.metric_rows(job_id)] == list(range(1, epochs + 1))
    assert len(stack.models_for(job_id)) == 1
