"""Queueing against a real redis-server: the message a worker will take, readiness, revoke."""

import json
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient

from app.jobs_queue import QUEUE, TRAIN_TASK

from .conftest import auth_for, npz_bytes
from .test_api import job_body


def test_job_message_reaches_the_broker(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    client = make_client(redis_url=redis_url)
    alice = auth_for(client, "alice")
    assert client.get("/readyz").json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "serving": "ok"},
    }
    files = {"file": ("tiny.npz", npz_bytes())}
    dataset = client.post("/v1/datasets", headers=alice, files=files).json()["id"]
    job = client.post("/v1/jobs", headers=alice, json=job_body(dataset)).json()

    with redis.Redis.from_url(redis_url) as broker:
        raw = broker.lrange(QUEUE, 0, -1)
        assert len(raw) == 1
        message = json.loads(raw[0])
        # Only the job id travels; the task id is the job id, so duplicates are recognisable.
        assert message["headers"]["task"] == TRAIN_TASK
        assert message["headers"]["id"] == job["id"]
        assert message["headers"]["argsrepr"] == repr([job["id"]])
    assert "freshnets_queue_depth 1.0" in client.get("/metrics").text

    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()
    assert cancelled["state"] == "cancelled"
