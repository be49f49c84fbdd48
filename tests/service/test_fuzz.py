"""Property-based: schemathesis generates requests from the app's own OpenAPI schema (valid and
invalid ones) and no answer may be a 500, nor a 2xx that breaks the documented response shape."""

from collections.abc import Callable

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from .conftest import auth_for, npz_bytes


@pytest.fixture
def api_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def alice_headers(api_client: TestClient) -> dict[str, str]:
    headers = auth_for(api_client, "alice")
    # Something to find: an upload, so ids and data set names are not all unknown.
    files = {"file": ("tiny.npz", npz_bytes(), "application/octet-stream")}
    assert api_client.post("/v1/datasets", headers=headers, files=files).status_code == 201
    return headers


def test_no_server_errors(api_client: TestClient, alice_headers: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    # /readyz answers 503 by design here (no broker); it takes no input and is tested on its own.
    operations = [op for op in operations if op.path != "/readyz"]

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=8,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers=alice_headers, checks=[not_a_server_error, response_schema_conformance]
            )

        check()
