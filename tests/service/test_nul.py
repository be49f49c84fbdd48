"""PostgreSQL text cannot hold NUL: such input must be a 4xx there too, never a driver error."""

from collections.abc import Callable

from fastapi.testclient import TestClient

from .conftest import npz_bytes
from .test_api import SPEC, job_body


def test_nul_characters_are_refused(
    client: TestClient, alice: dict[str, str], upload: Callable[..., dict]
) -> None:
    for path in ("/v1/jobs/a%00b", "/v1/models/a%00b", "/v1/datasets/a%00b",
                 "/v1/jobs/a%00b/metrics", "/v1/models/a%00b/file"):  # fmt: skip
        assert client.get(path, headers=alice).status_code in (404, 422), path
    assert client.delete("/v1/models/a%00b", headers=alice).status_code in (404, 422)
    assert client.post("/v1/jobs/a%00b/cancel", headers=alice).status_code in (404, 422)
    dataset = upload(alice)["id"]
    for body in (
        job_body("a\x00b"),
        job_body(dataset, architecture="mnist\x00cnn"),
        job_body(dataset, architecture={**SPEC, "name": "tiny\x00cnn"}),
        job_body(dataset, method="fresh\x00nets"),
    ):
        response = client.post("/v1/jobs", headers=alice, json=body)
        assert response.status_code == 422, response.text
    files = {"file": ("x\x00y.npz", npz_bytes(), "application/octet-stream")}
    response = client.post("/v1/datasets", headers=alice, files=files, data={"name": "a\x00b"})
    assert response.status_code == 422, response.text
    response = client.post("/v1/datasets", headers=alice, files=files)
    assert response.status_code in (201, 422), response.text
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer fn_\x00"}).status_code == 401
