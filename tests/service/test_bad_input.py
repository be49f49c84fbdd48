"""Every bad input of issue 4 gets a 4xx whose message names the field, and loses nothing."""

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import Job

from .conftest import new_session, npz_bytes
from .test_api import SPEC, job_body


def detail_text(response) -> str:  # type: ignore[no-untyped-def]
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return detail
    return " | ".join(".".join(map(str, d["loc"])) + ": " + d["msg"] for d in detail)


def with_layer(index: int, **changes: object) -> dict:
    layers = [dict(layer) for layer in SPEC["layers"]]
    layers[index].update(changes)
    return {**SPEC, "layers": layers}


BAD_JOBS = [
    # (overrides, the field the message must name)
    ({"dataset": "no-such-data"}, "body.dataset"),
    ({"method": "magic"}, "body.method"),
    ({"architecture": "no-such-preset"}, "body.architecture"),
    ({"compression": 0}, "body.compression"),
    ({"compression": -0.5}, "body.compression"),
    ({"compression": 1.5}, "body.compression"),
    ({"compression": "1/0"}, "body.compression"),
    ({"compression": "lots"}, "body.compression"),
    ({"compression": "2/1"}, "body.compression"),
    # A compression the method cannot reach on this network (freshcore's plan refuses it).
    ({"compression": "1/64"}, "body.compression"),
    ({"method": "lrd", "compression": "1/8"}, "body.compression"),
    # A kernel larger than its 4x4 input (layer 0 pads an 8x8 to 8x8, the pool halves it).
    ({"architecture": {**SPEC, "layers": [*SPEC["layers"][:3],
      {"type": "conv", "out_channels": 2, "kernel_size": 7}, *SPEC["layers"][3:]]}},
     "body.architecture.layers.3"),
    ({"architecture": with_layer(4, out_features=7)}, "body.architecture"),
    ({"architecture": with_layer(0, type="warp")}, "body.architecture.layers.0"),
    ({"architecture": with_layer(0, out_channels=-4)}, "body.architecture.layers.0"),
    ({"architecture": {**SPEC, "input_shape": [3, 32, 32]}}, "body.architecture.input_shape"),
    ({"architecture": {**SPEC, "num_classes": 5, "layers": [*SPEC["layers"][:-1],
      {"type": "fc", "out_features": 5}]}}, "body.architecture.num_classes"),
    ({"architecture": {"layers": []}}, "body.architecture"),
    ({"training": {"epochs": 0}}, "body.training.epochs"),
    ({"training": {"epochs": 10_000}}, "body.training.epochs"),
    ({"training": {"optimizer": "magic"}}, "body.training.optimizer"),
    ({"training": {"lr": "fast"}}, "body.training.lr"),
    ({"training": {"bogus": 1}}, "body.training.bogus"),
    ({"training": {"batch_size": 4097}}, "body.training.batch_size"),  # FRESHNETS_MAX_TRAIN_BATCH
    ({"training": {"num_threads": 100_000}}, "body.training.num_threads"),  # over the CPU count
    ({"seed": -1}, "body.seed"),
    ({"seed": "abc"}, "body.seed"),
    ({"extra": 1}, "body.extra"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "field"), BAD_JOBS, ids=[f for _, f in BAD_JOBS])
def test_bad_job_requests_name_the_field(
    client: TestClient,
    alice: dict[str, str],
    upload: Callable[..., dict],
    overrides: dict,
    field: str,
) -> None:
    dataset = upload(alice)["id"]
    body = job_body(dataset, **overrides)
    response = client.post("/v1/jobs", headers=alice, json=body)
    assert response.status_code == 422, response.text
    assert field in detail_text(response), detail_text(response)
    with new_session(client) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0  # nothing half-made


def test_missing_fields_and_non_json(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post("/v1/jobs", headers=alice, json={"method": "freshnets"})
    assert response.status_code == 422
    assert "body.dataset" in detail_text(response) and "body.architecture" in detail_text(response)
    response = client.post(
        "/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=b"{not json"
    )
    assert response.status_code == 422


def test_spec_over_the_size_cap(
    make_client: Callable[..., TestClient], upload: Callable[..., dict]
) -> None:
    from .conftest import auth_for

    client = make_client(max_virtual_weights=50)
    alice = auth_for(client, "alice")
    files = {"file": ("tiny.npz", npz_bytes(), "application/octet-stream")}
    dataset = client.post("/v1/datasets", headers=alice, files=files).json()["id"]
    response = client.post("/v1/jobs", headers=alice, json=job_body(dataset))
    assert response.status_code == 422
    assert "body.architecture" in detail_text(response)
    assert "50" in detail_text(response)


def test_model_over_the_size_limit(
    make_client: Callable[..., TestClient], upload: Callable[..., dict]
) -> None:
    """SPEC stores 235 values (940 bytes) dense, 29 (116 bytes) at 1/8: a 500-byte limit."""
    from .conftest import auth_for

    client = make_client(max_model_bytes=500)
    alice = auth_for(client, "alice")
    files = {"file": ("tiny.npz", npz_bytes(), "application/octet-stream")}
    dataset = client.post("/v1/datasets", headers=alice, files=files).json()["id"]
    for overrides, field in (
        ({"compression": 1}, "body.compression"),
        ({"method": "dense"}, "body.architecture"),  # dense ignores the compression
    ):
        response = client.post("/v1/jobs", headers=alice, json=job_body(dataset, **overrides))
        assert response.status_code == 422, response.text
        text = detail_text(response)
        assert field in text and "FRESHNETS_MAX_MODEL_BYTES" in text and "940" in text, text
    with new_session(client) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    response = client.post("/v1/jobs", headers=alice, json=job_body(dataset))  # 1/8: 116 bytes
    assert response.status_code == 202, response.text


def test_training_batch_and_threads_limits_are_settings(
    make_client: Callable[..., TestClient], upload: Callable[..., dict]
) -> None:
    from .conftest import auth_for

    client = make_client(max_train_batch=32, max_train_threads=3)
    alice = auth_for(client, "alice")
    files = {"file": ("tiny.npz", npz_bytes(), "application/octet-stream")}
    dataset = client.post("/v1/datasets", headers=alice, files=files).json()["id"]
    for training, field, setting in (
        ({"batch_size": 33}, "body.training.batch_size", "FRESHNETS_MAX_TRAIN_BATCH"),
        ({"num_threads": 4}, "body.training.num_threads", "FRESHNETS_MAX_TRAIN_THREADS"),
    ):
        response = client.post(
            "/v1/jobs",
            headers=alice,
            json=job_body(dataset, training={"epochs": 1, "batch_size": 16, **training}),
        )
        assert response.status_code == 422, response.text
        assert field in detail_text(response) and setting in detail_text(response)
    ok = {"epochs": 1, "batch_size": 32, "num_threads": 3}
    response = client.post("/v1/jobs", headers=alice, json=job_body(dataset, training=ok))
    assert response.status_code == 202, response.text


BAD_UPLOADS = [
    (b"this is not a zip file", "file"),
    (npz_bytes(x=None), "x"),
    (npz_bytes(y=np.arange(5)), "y"),
    (npz_bytes(x=np.zeros((60, 8, 8), np.int64)), "x"),
    (npz_bytes(extra=np.zeros(3)), "extra"),
    (npz_bytes(x_test=np.zeros((20, 9, 9), np.uint8)), "x_test"),
    (npz_bytes(y_test=np.full(20, -1)), "y_test"),
    (b"", "file"),
    (npz_bytes(n_train=6, classes=2), "validation split empty"),  # 3 a class: none to validate
]


@pytest.mark.parametrize(("data", "name"), BAD_UPLOADS, ids=[n.split()[0] for _, n in BAD_UPLOADS])
def test_bad_uploads_name_the_array(
    client: TestClient, alice: dict[str, str], data: bytes, name: str
) -> None:
    files = {"file": ("bad.npz", data, "application/octet-stream")}
    response = client.post("/v1/datasets", headers=alice, files=files)
    assert response.status_code == 422, response.text
    assert name in detail_text(response), detail_text(response)
    assert [d for d in client.get("/v1/datasets", headers=alice).json() if not d["builtin"]] == []


def test_upload_without_a_file(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post("/v1/datasets", headers=alice, data={"name": "x"})
    assert response.status_code == 422 and "body.file" in detail_text(response)


def test_oversize_upload_and_body(make_client: Callable[..., TestClient]) -> None:
    from .conftest import auth_for

    client = make_client(max_upload_bytes=4096, max_request_bytes=2048)
    alice = auth_for(client, "alice")
    big = npz_bytes(n_train=400)
    assert len(big) > 4096
    files = {"file": ("big.npz", big, "application/octet-stream")}
    response = client.post("/v1/datasets", headers=alice, files=files)
    assert response.status_code == 413
    assert "FRESHNETS_MAX_UPLOAD_BYTES" in response.json()["detail"]

    body = job_body("x", architecture={**SPEC, "name": "n" * 3000})
    response = client.post("/v1/jobs", headers=alice, json=body)
    assert response.status_code == 413
    assert "over FRESHNETS_MAX_REQUEST_BYTES (2,048 bytes)" in response.json()["detail"]

    # Over the upload limit by more than multipart framing: refused before it is read, naming
    # the setting's own value (not the value plus the framing's allowance).
    files = {"file": ("huge.npz", b"\0" * (2 * 1024 * 1024), "application/octet-stream")}
    response = client.post("/v1/datasets", headers=alice, files=files)
    assert response.status_code == 413
    assert "over FRESHNETS_MAX_UPLOAD_BYTES (4,096 bytes, plus " in response.json()["detail"]

    # Streamed without a Content-Length: counted as it arrives.
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b" " * 1024

    response = client.post(
        "/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=chunks()
    )
    assert response.status_code == 413

    # A Transfer-Encoding beside a Content-Length frames the body: the length bounds nothing.
    both = {**alice, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    both["Content-Length"] = "10"
    response = client.post("/v1/jobs", headers=both, content=b" " * 10240)
    assert response.status_code == 413


def test_unknown_ids_are_404(client: TestClient, alice: dict[str, str]) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/metrics", "/v1/models/nope",
                 "/v1/models/nope/file", "/v1/datasets/nope"):  # fmt: skip
        response = client.get(path, headers=alice)
        assert response.status_code == 404 and response.json()["detail"], path
    assert client.get("/v1/jobs/nope/metrics?after=x", headers=alice).status_code in (404, 422)
