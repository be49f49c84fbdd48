"""The predict route's hand-read key and `k`/`top_k` (no Depends/Query on the hot path): the same
checks, the same OpenAPI description, and one owner lookup per key when its memo expires."""

import asyncio
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import freshcore
from app.api.routes import predict as predict_route
from app.serving import get_serving

from .conftest import MakeApp, StoreModel, auth

BODY = {"inputs": [[0] * 8] * 8}


@pytest.fixture
def digits_id(store_model: StoreModel, digits_model: freshcore.FreshModel) -> str:
    return store_model(digits_model)


def test_query_k_and_key_are_checked(
    make_app: MakeApp, keys: dict[str, str], digits_id: str
) -> None:
    client = TestClient(make_app())
    url = f"/v1/models/{digits_id}/predict"
    headers = auth(keys["alice"])
    for query, loc in (("?k=abc", ["query", "k"]), ("?top_k=0", ["query", "top_k"]),
                       ("?k=1001", ["query", "k"])):  # fmt: skip
        r = client.post(url + query, json=BODY, headers=headers)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
    r = client.post(url + "?top_k=2", json=BODY, headers=headers)
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 2
    r = client.post(url + "?k=3&top_k=2", json=BODY, headers=headers)
    assert len(r.json()["predictions"][0]["top_k"]) == 3
    assert client.post(url + "?k=3&top_k=x", json=BODY, headers=headers).status_code == 422
    r = client.post(url, json={**BODY, "k": 4}, headers=headers)
    assert len(r.json()["predictions"][0]["top_k"]) == 4
    assert client.post(url, json=BODY).status_code == 401
    basic = {"Authorization": f"Basic {keys['alice']}"}
    assert client.post(url, json=BODY, headers=basic).status_code == 401
    wrong = auth(keys["alice"] + "x")
    assert client.post(url, json=BODY, headers=wrong).status_code == 401

    op = client.get("/openapi.json").json()["paths"]["/v1/models/{model_id}/predict"]["post"]
    assert [(p["name"], p["in"]) for p in op["parameters"]] == [
        ("model_id", "path"), ("k", "query"), ("top_k", "query")
    ]  # fmt: skip
    assert op["security"] == [{"HTTPBearer": []}]


@pytest.mark.anyio
async def test_expired_key_is_looked_up_once(
    make_app: MakeApp, keys: dict[str, str], digits_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    real_lookup = predict_route._lookup_owner

    def slow_lookup(*args: object) -> str:
        calls.append(time.monotonic())
        time.sleep(0.2)  # long enough that every request below arrives while it runs
        return real_lookup(*args)

    monkeypatch.setattr(predict_route, "_lookup_owner", slow_lookup)
    app = make_app()
    url = f"/v1/models/{digits_id}/predict"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        rs = await asyncio.gather(
            *(client.post(url, json=BODY, headers=auth(keys["alice"])) for _ in range(12))
        )
        assert [r.status_code for r in rs] == [200] * 12
        assert len(calls) == 1
        get_serving(app).recent_owners.clear()  # the memo expires
        rs = await asyncio.gather(
            *(client.post(url, json=BODY, headers=auth(keys[name])) for name in ["alice"] * 6
              + ["bob"] * 6)
        )  # fmt: skip
        # bob does not own the model (404), but his key is valid: one lookup per key.
        assert [r.status_code for r in rs] == [200] * 6 + [404] * 6
        assert len(calls) == 3
        assert not get_serving(app).owner_lookups
