"""What one owner may hold at once: queued or running jobs, and stored bytes. A request over a
quota is refused naming its setting, adds nothing, and leaves the other owners alone."""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from app.api import quotas
from app.db.models import Owner, UserDataset

from .conftest import auth_for, new_session, npz_bytes, owner_id
from .test_api import job_body


def test_an_owner_has_at_most_max_active_jobs_queued_or_running(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_active_jobs=2)
    alice, bob = auth_for(client, "alice"), auth_for(client, "bob")
    datasets = {}
    for who, headers in (("alice", alice), ("bob", bob)):
        files = {"file": ("tiny.npz", npz_bytes(), "application/octet-stream")}
        response = client.post("/v1/datasets", headers=headers, files=files)
        assert response.status_code == 201, response.text
        datasets[who] = response.json()["id"]

    first, second = (
        client.post("/v1/jobs", headers=alice, json=job_body(datasets["alice"], seed=s))
        for s in (1, 2)
    )
    assert first.status_code == second.status_code == 202
    third = client.post("/v1/jobs", headers=alice, json=job_body(datasets["alice"]))
    assert third.status_code == 429, third.text
    detail = third.json()["detail"]
    assert "2 of this owner's jobs are queued or running" in detail
    assert "FRESHNETS_MAX_ACTIVE_JOBS (2)" in detail
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 2  # nothing added

    # Another owner's queue is their own.
    assert client.post("/v1/jobs", headers=bob, json=job_body(datasets["bob"])).status_code == 202
    # A job that ends frees its place.
    cancelled = client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=alice)
    assert cancelled.json()["state"] == "cancelled"
    again = client.post("/v1/jobs", headers=alice, json=job_body(datasets["alice"]))
    assert again.status_code == 202, again.text

    usage = client.get("/v1/usage", headers=alice).json()
    assert (usage["owner"], usage["active_jobs"], usage["max_active_jobs"]) == ("alice", 2, 2)

    unlimited = make_client(max_active_jobs=0)
    for _ in range(3):
        response = unlimited.post("/v1/jobs", headers=alice, json=job_body(datasets["alice"]))
        assert response.status_code == 202, response.text


def test_an_owner_stores_at_most_max_owner_bytes(make_client: Callable[..., TestClient]) -> None:
    data = npz_bytes()
    client = make_client(max_owner_bytes=2 * len(data) + 50, max_upload_bytes=10**6)
    alice, bob = auth_for(client, "alice"), auth_for(client, "bob")

    def upload(headers: dict[str, str], name: str) -> object:
        files = {"file": (f"{name}.npz", data, "application/octet-stream")}
        return client.post("/v1/datasets", headers=headers, files=files)

    kept = [upload(alice, name) for name in ("one", "two")]
    assert [r.status_code for r in kept] == [201, 201]
    over = upload(alice, "three")
    assert over.status_code == 413, over.text
    detail = over.json()["detail"]
    assert detail.startswith(f"file: needs about {len(data):,} bytes")
    assert f"this owner stores {2 * len(data):,} of the" in detail
    assert "FRESHNETS_MAX_OWNER_BYTES" in detail
    uploads = [d for d in client.get("/v1/datasets", headers=alice).json() if not d["builtin"]]
    assert sorted(d["name"] for d in uploads) == ["one", "two"]  # nothing added
    assert upload(bob, "three").status_code == 201  # another owner's bytes are their own
    usage = client.get("/v1/usage", headers=alice).json()
    assert usage["uploads_bytes"] == usage["stored_bytes"] == 2 * len(data)
    assert (usage["models_bytes"], usage["max_owner_bytes"]) == (0, 2 * len(data) + 50)
    assert usage["max_upload_bytes"] == 10**6

    # The model a job would store counts too: 50 bytes left hold no model of this network.
    dataset = kept[0].json()["id"]
    job = client.post("/v1/jobs", headers=alice, json=job_body(dataset))
    assert job.status_code == 409, job.text
    assert job.json()["detail"].startswith("model: needs about ")
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0

    # Deleting frees the bytes.
    removed = client.delete(f"/v1/datasets/{kept[1].json()['id']}", headers=alice)
    assert removed.status_code == 204
    assert client.post("/v1/jobs", headers=alice, json=job_body(dataset)).status_code == 202
    assert upload(alice, "three").status_code == 201


def test_a_request_checks_the_quota_after_another_one_of_its_owner_commits(
    make_client: Callable[..., TestClient],
) -> None:
    """The check runs under the owner's row lock: an upload that arrives while another
    transaction of the same owner holds it waits, then counts what that one stored."""
    data = npz_bytes()
    client = make_client(max_owner_bytes=len(data) + 50)
    alice = auth_for(client, "alice")
    with new_session(client) as session:
        owner = session.get(Owner, owner_id(client, alice))
        assert owner is not None
        quotas.hold(session, owner)  # another request of alice's, between its check and commit
        files = {"file": ("late.npz", data, "application/octet-stream")}
        with ThreadPoolExecutor(1) as pool:
            late = pool.submit(client.post, "/v1/datasets", headers=alice, files=files)
            time.sleep(1.0)
            assert not late.done()  # waiting for the lock
            session.add(
                UserDataset(owner_id=owner.id, name="first", sha256="0" * 64, size_bytes=len(data))
            )
            session.commit()
            response = late.result(timeout=60)
    assert response.status_code == 413, response.text
    assert f"this owner stores {len(data):,} of the" in response.json()["detail"]
