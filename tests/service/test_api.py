"""The HTTP API on a real, migrated database: data sets, architectures, jobs, models, owners."""

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from app.db.models import EpochMetric, Job, JobState, Model, ModelBlob
from app.main import STATIC_DIR

from .conftest import auth_for, new_session, owner_id

SPEC = {
    "name": "tiny-cnn",
    "input_shape": [1, 8, 8],
    "num_classes": 3,
    "layers": [
        {"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "pool", "kind": "max", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "fc", "out_features": 3},
    ],
}


def job_body(dataset: str, /, **overrides: object) -> dict:
    body = {
        "dataset": dataset,
        "architecture": SPEC,
        "method": "freshnets",
        "compression": "1/8",
        "training": {"epochs": 2, "batch_size": 16},
        "seed": 3,
    }
    body.update(overrides)
    return body


def test_health_and_auth(client: TestClient, alice: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")  # the broker is down in this fixture
    assert ready.status_code == 503
    checks = {"database": "ok", "broker": "unreachable", "serving": "ok"}
    assert ready.json()["checks"] == checks
    assert client.get("/v1/jobs").status_code == 401
    bad = client.get("/v1/jobs", headers={"Authorization": "Bearer fn_not-a-key"})
    assert bad.status_code == 401 and "API key" in bad.json()["detail"]
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "FreshNets"
    assert client.get("/docs").status_code == 200
    if (STATIC_DIR / "index.html").exists():  # the dashboard, served at "/"
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_architectures(client: TestClient, alice: dict[str, str]) -> None:
    presets = {p["name"]: p for p in client.get("/v1/architectures", headers=alice).json()}
    assert {"mnist-cnn", "cifar-cnn"} <= presets.keys()
    assert presets["mnist-cnn"]["input_shape"] == [1, 28, 28]
    assert presets["mnist-cnn"]["virtual_weights"] > 100_000


def test_datasets_upload_list_get_delete(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], upload: Callable[..., dict]
) -> None:
    listed = client.get("/v1/datasets", headers=alice).json()
    builtin = [d for d in listed if d["builtin"]]
    assert builtin and all(d["id"] == d["name"] for d in builtin)
    one = client.get(f"/v1/datasets/{builtin[0]['id']}", headers=bob)
    assert one.status_code == 200 and one.json()["builtin"]  # built-ins are everyone's

    created = upload(alice)
    assert created["input_shape"] == [1, 8, 8]
    assert created["num_classes"] == 3
    assert created["builtin"] is False and created["size_bytes"] > 0
    assert client.get(f"/v1/datasets/{created['id']}", headers=alice).json() == created
    assert created["id"] in [d["id"] for d in client.get("/v1/datasets", headers=alice).json()]

    # Another owner sees neither the data set nor the way to delete it.
    assert created["id"] not in [d["id"] for d in client.get("/v1/datasets", headers=bob).json()]
    assert client.get(f"/v1/datasets/{created['id']}", headers=bob).status_code == 404
    assert client.delete(f"/v1/datasets/{created['id']}", headers=bob).status_code == 404
    assert client.delete(f"/v1/datasets/{builtin[0]['id']}", headers=alice).status_code == 409

    assert client.delete(f"/v1/datasets/{created['id']}", headers=alice).status_code == 204
    assert client.get(f"/v1/datasets/{created['id']}", headers=alice).status_code == 404


def test_job_lifecycle_as_the_api_sees_it(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], upload: Callable[..., dict]
) -> None:
    dataset = upload(alice)["id"]
    response = client.post("/v1/jobs", headers=alice, json=job_body(dataset))
    # The broker is down: the job is still accepted and kept queued for the reconciler.
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["progress"] == 0.0
    assert job["compression"] == pytest.approx(1 / 8)
    assert job["architecture"]["layers"][0]["out_channels"] == 4
    assert job["training"]["epochs"] == 2 and job["training"]["optimizer"] == "sgd"
    assert job["total_epochs"] == 2 and job["model_id"] is None

    # A preset adapts to the data set's shape and classes.
    preset = client.post(
        "/v1/jobs", headers=alice, json=job_body(dataset, architecture="mnist-cnn", compression=0.5)
    )
    assert preset.status_code == 202, preset.text
    assert preset.json()["architecture"]["input_shape"] == [1, 8, 8]
    assert preset.json()["architecture_name"] == "mnist-cnn"

    # The worker's side, written as the worker writes it: running, two epochs of metrics.
    with new_session(client) as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.state, row.started_at, row.epoch, row.progress = (
            JobState.running,
            datetime.now(UTC),
            2,
            1.0,
        )
        for epoch in (1, 2):
            session.add(
                EpochMetric(
                    job_id=row.id,
                    epoch=epoch,
                    train_loss=1.0 / epoch,
                    train_accuracy=0.5,
                    val_loss=1.1,
                    val_accuracy=0.4 + epoch / 10,
                    learning_rate=0.05,
                    seconds=0.1,
                )
            )
        session.commit()

    got = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert got["state"] == "running" and got["epoch"] == 2
    assert got["latest_metrics"]["epoch"] == 2
    assert got["latest_metrics"]["val_accuracy"] == pytest.approx(0.6)
    assert got["queued_seconds"] >= 0 and got["run_seconds"] >= 0
    assert got["started_at"].endswith(("Z", "+00:00"))

    series = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()
    assert [m["epoch"] for m in series["items"]] == [1, 2]
    after = client.get(f"/v1/jobs/{job['id']}/metrics?after=1", headers=alice).json()
    assert [m["epoch"] for m in after["items"]] == [2]

    # Listing: a filter by state and pages.
    listed = client.get("/v1/jobs?state=running", headers=alice).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]] and listed["total"] == 1
    assert listed["items"][0]["latest_metrics"]["epoch"] == 2
    page = client.get("/v1/jobs?limit=1&offset=1", headers=alice).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    started = client.get(f"/v1/jobs?id_prefix={job['id'][:8]}", headers=alice).json()
    assert [j["id"] for j in started["items"]] == [job["id"]] and started["total"] == 1
    assert client.get("/v1/jobs?state=bogus", headers=alice).status_code == 422

    # Cancel: the running job is asked to stop; the queued one is cancelled at once.
    running = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()
    assert running["state"] == "running" and running["cancel_requested"] is True
    queued = client.post(f"/v1/jobs/{preset.json()['id']}/cancel", headers=alice).json()
    assert queued["state"] == "cancelled" and queued["finished_at"] is not None
    again = client.post(f"/v1/jobs/{preset.json()['id']}/cancel", headers=alice)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]

    # A data set a live job uses cannot go.
    assert client.delete(f"/v1/datasets/{dataset}", headers=alice).status_code == 409

    # Bob sees none of it, and cannot train on Alice's data set.
    assert client.get("/v1/jobs", headers=bob).json()["total"] == 0
    stolen = client.post("/v1/jobs", headers=bob, json=job_body(dataset))
    assert stolen.status_code == 422 and stolen.json()["detail"][0]["loc"] == ["body", "dataset"]
    for path in ("", "/metrics"):
        assert client.get(f"/v1/jobs/{job['id']}{path}", headers=bob).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob).status_code == 404


def test_delete_a_finished_job_keeps_its_model(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], upload: Callable[..., dict]
) -> None:
    dataset = upload(alice, name="shapes")["id"]
    job = client.post("/v1/jobs", headers=alice, json=job_body(dataset)).json()
    other = client.post("/v1/jobs", headers=alice, json=job_body(dataset)).json()
    assert (job["dataset"], job["dataset_name"]) == (dataset, "shapes")  # the upload's own name
    digits = job_body("digits", architecture="mnist-cnn")  # the preset adapts to its shape
    builtin = client.post("/v1/jobs", headers=alice, json=digits).json()
    assert (builtin["dataset"], builtin["dataset_name"]) == ("digits", "digits")
    client.post(f"/v1/jobs/{builtin['id']}/cancel", headers=alice)
    assert client.delete(f"/v1/jobs/{builtin['id']}", headers=alice).status_code == 204

    # Queued or running: not deletable (a worker may be training it); the message says how.
    refused = client.delete(f"/v1/jobs/{job['id']}", headers=alice)
    assert refused.status_code == 409 and "queued; cancel it first" in refused.json()["detail"]
    with new_session(client) as session:  # the worker's side: running, an epoch, then done
        row = session.get(Job, job["id"])
        row.state, row.started_at, row.epoch = JobState.running, datetime.now(UTC), 1
        session.add(
            EpochMetric(
                job_id=row.id, epoch=1, train_loss=1.0, train_accuracy=0.5, learning_rate=0.05,
                seconds=0.1,
            )
        )  # fmt: skip
        session.commit()
    refused = client.delete(f"/v1/jobs/{job['id']}", headers=alice)
    assert refused.status_code == 409 and "running" in refused.json()["detail"]
    with new_session(client) as session:
        row = session.get(Job, job["id"])
        row.state, row.finished_at = JobState.succeeded, datetime.now(UTC)
        model = Model(
            owner_id=row.owner_id, job_id=row.id, dataset=dataset, method="freshnets",
            compression_requested=1 / 8, compression_achieved=0.125, stored_parameters=1,
            virtual_parameters=8, compact_bytes=4, dense_bytes=32, name="kept",
        )  # fmt: skip
        session.add(model)
        session.flush()
        session.add(ModelBlob(model_id=model.id, data=b"1234"))
        session.commit()
        model_id = model.id
    assert client.get(f"/v1/models/{model_id}", headers=alice).json()["job_id"] == job["id"]

    assert client.delete(f"/v1/jobs/{job['id']}", headers=bob).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 404
    with new_session(client) as session:  # its metrics went with it
        assert session.query(EpochMetric).filter_by(job_id=job["id"]).count() == 0
    kept = client.get(f"/v1/models/{model_id}", headers=alice).json()
    assert kept["job_id"] is None and kept["name"] == "kept" and kept["dataset_name"] == "shapes"
    assert client.get(f"/v1/models/{model_id}/file", headers=alice).content == b"1234"

    # A cancelled job goes too; the listing then holds nothing.
    client.post(f"/v1/jobs/{other['id']}/cancel", headers=alice)
    assert client.delete(f"/v1/jobs/{other['id']}", headers=alice).status_code == 204
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0

    # The model outlives its upload too; its data set then has no name to show.
    assert client.delete(f"/v1/datasets/{dataset}", headers=alice).status_code == 204
    listed = client.get("/v1/models", headers=alice).json()["items"]
    assert [(m["dataset"], m["dataset_name"]) for m in listed] == [(dataset, None)]


def test_models(client: TestClient, alice: dict[str, str], bob: dict[str, str]) -> None:
    import freshcore

    model = freshcore.build_model(SPEC, method="freshnets", compression=1 / 8, seed=3)
    data = freshcore.to_bytes(model)
    report = freshcore.size_report(model).to_dict()
    with new_session(client) as session:
        # Written as the worker writes a finished job's model.
        row = Model(
            owner_id=owner_id(client, alice),
            dataset="tiny",
            architecture_name="tiny-cnn",
            method="freshnets",
            compression_requested=1 / 8,
            compression_achieved=report["ratio"],
            stored_parameters=report["stored_parameters"],
            virtual_parameters=report["virtual_weights"],
            compact_bytes=len(data),
            dense_bytes=report["dense_bytes"],
            test_accuracy=0.9,
            size_report=report,
        )
        session.add(row)
        session.flush()
        session.add(ModelBlob(model_id=row.id, data=data))
        session.commit()
        model_id = row.id

    listed = client.get("/v1/models", headers=alice).json()
    assert [m["id"] for m in listed["items"]] == [model_id]
    # Filters: the data set, and the start of the id (the CLI's short ids).
    for query, found in (
        (f"id_prefix={model_id[:5]}", [model_id]),
        (f"id_prefix={model_id}", [model_id]),
        (f"id_prefix={'0' if model_id[0] != '0' else '1'}", []),
        ("dataset=tiny", [model_id]),
        ("dataset=mnist", []),
    ):
        page = client.get(f"/v1/models?{query}", headers=alice).json()
        assert [m["id"] for m in page["items"]] == found and page["total"] == len(found), query
    assert client.get(f"/v1/models?id_prefix={model_id[:5]}", headers=bob).json()["total"] == 0
    for bad in ("XYZ", "%25", model_id + "0"):
        response = client.get(f"/v1/models?id_prefix={bad}", headers=alice)
        assert response.status_code == 422 and "id_prefix" in str(response.json()), bad
    got = client.get(f"/v1/models/{model_id}", headers=alice).json()
    assert got["compact_bytes"] == len(data) and got["test_accuracy"] == 0.9
    assert got["compression_requested"] == pytest.approx(1 / 8)
    assert got["architecture"] is None and got["warm"] is False  # no job: made outside the API
    file = client.get(f"/v1/models/{model_id}/file", headers=alice)
    assert file.status_code == 200 and file.content == data
    assert file.headers["content-type"] == "application/octet-stream"
    assert f"freshnets-{model_id}.safetensors" in file.headers["content-disposition"]
    assert freshcore.from_bytes(file.content).method == "freshnets"

    assert client.get("/v1/models", headers=bob).json()["total"] == 0
    for path in ("", "/file"):
        assert client.get(f"/v1/models/{model_id}{path}", headers=bob).status_code == 404
    assert client.delete(f"/v1/models/{model_id}", headers=bob).status_code == 404
    assert client.delete(f"/v1/models/{model_id}", headers=alice).status_code == 204
    assert client.get(f"/v1/models/{model_id}", headers=alice).status_code == 404
    with new_session(client) as session:
        assert session.get(ModelBlob, model_id) is None  # the blob went with it


def test_revoked_key_is_refused(client: TestClient) -> None:
    from app.security import revoke_api_key

    headers = auth_for(client, "carol")
    assert client.get("/v1/models", headers=headers).status_code == 200
    with new_session(client) as session:
        assert revoke_api_key(session, headers["Authorization"].split()[1], datetime.now(UTC)) == 1
    assert client.get("/v1/models", headers=headers).status_code == 401


def test_metrics_endpoint(client: TestClient, alice: dict[str, str], upload) -> None:
    dataset = upload(alice)["id"]
    assert client.post("/v1/jobs", headers=alice, json=job_body(dataset)).status_code == 202
    text = client.get("/metrics").text
    assert 'freshnets_jobs{state="queued"} 1.0' in text
    assert "freshnets_queue_depth -1.0" in text  # the broker is down here
    assert 'freshnets_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert "freshnets_http_request_duration_seconds_bucket" in text
    client.get("/v1/jobs/some-id", headers=alice)
    text = client.get("/metrics").text  # labelled by route template, never by raw path
    assert 'route="/v1/jobs/{job_id}",status="404"' in text and "some-id" not in text


def test_a_label_goes_from_the_job_to_its_model_and_can_change(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], upload: Callable[..., dict]
) -> None:
    dataset = upload(alice)["id"]
    named = client.post("/v1/jobs", headers=alice, json=job_body(dataset, name="  mnist, try 2 "))
    assert named.status_code == 202, named.text
    assert named.json()["name"] == "mnist, try 2"  # trimmed
    for blank in ("", "   ", None):
        got = client.post("/v1/jobs", headers=alice, json=job_body(dataset, name=blank))
        assert got.status_code == 202 and got.json()["name"] is None, got.text
    for bad in ("a\x00b", "x" * 201, 7):
        got = client.post("/v1/jobs", headers=alice, json=job_body(dataset, name=bad))
        assert got.status_code == 422 and got.json()["detail"][0]["loc"] == ["body", "name"]
    job_id = named.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["name"] == "mnist, try 2"

    import freshcore

    model = freshcore.build_model(SPEC, method="freshnets", compression=1 / 8, seed=3)
    data = freshcore.to_bytes(model)
    report = freshcore.size_report(model).to_dict()
    with new_session(client) as session:  # as the worker writes it: the job's label
        row = Model(
            owner_id=owner_id(client, alice), job_id=job_id, name="mnist, try 2",
            dataset=dataset, method="freshnets", compression_requested=1 / 8,
            compression_achieved=report["ratio"], stored_parameters=report["stored_parameters"],
            virtual_parameters=report["virtual_weights"], compact_bytes=len(data),
            dense_bytes=report["dense_bytes"], size_report=report,
        )  # fmt: skip
        session.add(row)
        session.flush()
        session.add(ModelBlob(model_id=row.id, data=data))
        session.commit()
        model_id = row.id
    url = f"/v1/models/{model_id}"
    assert client.get(url, headers=alice).json()["name"] == "mnist, try 2"

    renamed = client.patch(url, headers=alice, json={"name": " the keeper "})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "the keeper" and renamed.json()["id"] == model_id
    assert client.get("/v1/models", headers=alice).json()["items"][0]["name"] == "the keeper"
    # Listings filter on a part of the label, whatever its case; "%" and "_" are plain text.
    for path, part, found in (
        ("/v1/models", "KEEP", [model_id]),
        ("/v1/models", "%", []),
        ("/v1/models", "the_keeper", []),
        ("/v1/jobs", "Try 2", [job_id]),
    ):
        listed = client.get(path, headers=alice, params={"name": part}).json()["items"]
        assert [item["id"] for item in listed] == found, (path, part)
    assert client.get("/v1/models", headers=bob, params={"name": "keep"}).json()["total"] == 0
    assert client.get("/v1/models", headers=alice, params={"name": ""}).status_code == 422
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["name"] == "mnist, try 2"
    refused = (({"name": "x" * 201}, "name"), ({"method": "dense"}, "method"), ({}, "name"))
    for bad, where in refused:
        got = client.patch(url, headers=alice, json=bad)
        assert got.status_code == 422
        assert ["body", where] in [e["loc"] for e in got.json()["detail"]]
    assert client.patch(url, headers=bob, json={"name": "mine"}).status_code == 404
    cleared = client.patch(url, headers=alice, json={"name": None})
    assert cleared.status_code == 200 and cleared.json()["name"] is None
