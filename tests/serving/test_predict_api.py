"""POST /v1/models/{id}/predict over HTTP: every input form, every bad input, top-k, owners,
lazy loading under concurrency, micro-batching, the bounded queue, metrics and warm-up."""

import asyncio
import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import freshcore
from app.serving import get_serving, is_warm, serving_ready

from .conftest import DIGIT_NAMES, MakeApp, StoreModel, auth


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def detail(r: httpx.Response) -> str:
    """The error message(s) of a 4xx, unescaped."""
    d = r.json()["detail"]
    return d if isinstance(d, str) else " | ".join(f"{e['loc']}: {e['msg']}" for e in d)


def metric(client: TestClient | None, text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def digits_id(store_model: StoreModel, digits_model: freshcore.FreshModel) -> str:
    return store_model(digits_model)


@pytest.fixture
def client(make_app: MakeApp) -> TestClient:
    return TestClient(make_app())


def test_predictions_are_right_with_names_and_top_k(
    client: TestClient, keys: dict[str, str], digits_id: str, digits
) -> None:
    x, y = digits
    held_out = slice(1500, 1600)
    r = client.post(
        f"/v1/models/{digits_id}/predict?k=3",
        json={"inputs": x[held_out].tolist()},
        headers=auth(keys["alice"]),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == digits_id
    preds = body["predictions"]
    assert len(preds) == 100
    accuracy = np.mean([p["label"] == t for p, t in zip(preds, y[held_out], strict=True)])
    assert accuracy >= 0.8
    for p in preds:
        assert p["class_name"] == DIGIT_NAMES[p["label"]]
        assert abs(sum(p["probabilities"]) - 1) < 1e-4 and len(p["probabilities"]) == 10
        probs = [t["probability"] for t in p["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert p["top_k"][0]["label"] == p["label"] == int(np.argmax(p["probabilities"]))
        assert all(t["class_name"] == DIGIT_NAMES[t["label"]] for t in p["top_k"])


def test_every_input_form_gives_the_same_answer(
    client: TestClient, keys: dict[str, str], digits_id: str, digits
) -> None:
    x, _ = digits
    pixels = np.round(x[1500:1504, 0] * 255).astype(np.uint8)  # (4, 8, 8) byte images
    unit = pixels.astype(np.float32) / 255
    url, headers = f"/v1/models/{digits_id}/predict", auth(keys["alice"])
    bodies = [
        {"inputs": unit.tolist()},  # (N, H, W)
        {"inputs": unit[:, None].tolist()},  # (N, C, H, W)
        {"inputs": pixels.tolist(), "scale": "byte", "k": 10},
        {"inputs_b64": base64.b64encode(unit.astype("<f4").tobytes()).decode(),
         "dtype": "float32", "shape": [4, 1, 8, 8]},
        {"inputs_b64": base64.b64encode(pixels.tobytes()).decode(), "dtype": "uint8",
         "shape": [4, 8, 8]},
    ]  # fmt: skip
    answers = []
    for body in bodies:
        r = client.post(url, json=body, headers=headers)
        assert r.status_code == 200, (body.keys(), r.text)
        answers.append(r.json()["predictions"])
    files = [("images", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(pixels)]
    r = client.post(url + "?top_k=2", files=files, headers=headers)
    assert r.status_code == 200, r.text
    answers.append(r.json()["predictions"])
    assert [len(a[0]["top_k"]) for a in answers] == [5, 5, 10, 5, 5, 2]
    reference = np.array([p["probabilities"] for p in answers[0]])
    for answer in answers[1:]:
        assert np.allclose([p["probabilities"] for p in answer], reference, atol=1e-5)
    # One sample (H, W) alone is a batch of one.
    r = client.post(url, json={"inputs": unit[0].tolist()}, headers=headers)
    assert np.allclose(r.json()["predictions"][0]["probabilities"], reference[0], atol=1e-5)


BAD = [
    (b"{not json", 422, "Invalid JSON"),
    (json.dumps({"inputs": [[0.5] * 8] * 7}).encode(), 422,
     "wrong shape (7, 8); this model expects (1, 8, 8), (8, 8), (N, 8, 8)"),
    (json.dumps({"inputs": [[[0.5] * 8] * 8] * 9}).encode(), 413, "over the limit of 8"),
    (b'{"inputs": [[NaN, 0.5]]}', 422, ""),
    (json.dumps({"inputs": [["x"] * 8] * 8}).encode(), 422, "must be numbers, found strings"),
    (json.dumps({"inputs": [[300] * 8] * 8, "scale": "byte"}).encode(), 422, "[0, 255]"),
    (json.dumps({"inputs": [[3] * 8] * 8}).encode(), 422, '"scale": "byte"'),
    (json.dumps({"inputs": [[0] * 8] * 8, "k": 0}).encode(), 422, "greater than or equal to 1"),
    (json.dumps({"inputs": [[0] * 8] * 8, "colour": 1}).encode(), 422, "colour"),
    (json.dumps({}).encode(), 422, "exactly one of `inputs` or `inputs_b64`"),
    (json.dumps({"inputs_b64": "AAAA"}).encode(), 422, "needs `dtype` and `shape`"),
    (json.dumps({"inputs_b64": "AAAA", "dtype": "uint8", "shape": [8, 8]}).encode(), 422,
     "3 bytes do not match shape [8, 8]"),
    (json.dumps({"inputs_b64": "@@", "dtype": "uint8", "shape": [8, 8]}).encode(), 422,
     "not valid base64"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "fragment"), BAD)
def test_bad_json_bodies_are_4xx_naming_the_fault(
    make_app: MakeApp,
    keys: dict[str, str],
    digits_id: str,
    body: bytes,
    status: int,
    fragment: str,
) -> None:
    client = TestClient(make_app(max_batch=8))
    r = client.post(
        f"/v1/models/{digits_id}/predict",
        content=body,
        headers={**auth(keys["alice"]), "Content-Type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert fragment in detail(r)


def test_nan_is_refused(client: TestClient, keys: dict[str, str], digits_id: str) -> None:
    row = ["NaN"] + ["0.5"] * 7
    body = '{"inputs": [' + ",".join(["[" + ",".join(row) + "]"] * 8) + "]}"
    r = client.post(
        f"/v1/models/{digits_id}/predict",
        content=body,
        headers={**auth(keys["alice"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and ("NaN" in r.text or "nan" in r.text.lower()), r.text


def test_bad_images_and_query(make_app: MakeApp, keys: dict[str, str], digits_id: str) -> None:
    client = TestClient(make_app(max_image_pixels=10_000, max_batch=2))
    url, headers = f"/v1/models/{digits_id}/predict", auth(keys["alice"])
    good = png(np.zeros((8, 8), np.uint8))
    cases = [
        ([("images", ("a.txt", b"hello", "text/plain"))], 400, "not a decodable image"),
        ([("images", ("big.png", png(np.zeros((200, 200), np.uint8)), "image/png"))], 413,
         "40000 pixels is over the limit of 10000"),
        ([("images", (f"{i}.png", good, "image/png")) for i in range(3)], 413,
         "over the batch limit of 2"),
    ]  # fmt: skip
    for files, status, fragment in cases:
        r = client.post(url, files=files, headers=headers)
        assert r.status_code == status and fragment in detail(r), r.text
    r = client.post(url, files=[("images", ("a.png", good, "image/png"))], data={"k": "zero"},
                    headers=headers)  # fmt: skip
    assert r.status_code == 422 and "k must be an integer" in detail(r)
    r = client.post(url + "?k=0", json={"inputs": [[0] * 8] * 8}, headers=headers)
    assert r.status_code == 422


def test_owners_and_unknown_models(
    client: TestClient, keys: dict[str, str], digits_id: str
) -> None:
    body = {"inputs": [[0] * 8] * 8}
    r = client.post(f"/v1/models/{digits_id}/predict", json=body, headers=auth(keys["bob"]))
    assert r.status_code == 404
    assert not is_warm(client.app, digits_id)
    r = client.post("/v1/models/nope/predict", json=body, headers=auth(keys["alice"]))
    assert r.status_code == 404 and "nope" in r.text
    assert client.post(f"/v1/models/{digits_id}/predict", json=body).status_code == 401


@pytest.mark.anyio
async def test_concurrent_cold_requests_load_once_and_share_one_forward(
    make_app: MakeApp, keys: dict[str, str], digits_id: str, digits
) -> None:
    app = make_app(batch_max_wait_ms=300, batch_max_size=64)
    x, _ = digits
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        before = (await client.get("/metrics")).text
        rs = await asyncio.gather(*(
            client.post(f"/v1/models/{digits_id}/predict", json={"inputs": x[i].tolist()},
                        headers=auth(keys["alice"]))
            for i in range(8)
        ))  # fmt: skip
        after = (await client.get("/metrics")).text
    assert [r.status_code for r in rs] == [200] * 8
    # Each request got its own sample's answer.
    entry = get_serving(app).cache.peek(digits_id)
    assert entry is not None
    import torch

    with torch.inference_mode():
        expected = torch.softmax(entry.model(torch.from_numpy(x[:8])), 1).numpy()
    got = np.array([r.json()["predictions"][0]["probabilities"] for r in rs])
    assert np.allclose(got, expected, atol=1e-5)
    delta = {
        name: metric(None, after, name) - metric(None, before, name)
        for name in (
            "freshnets_model_cache_misses_total",
            "freshnets_model_rebuild_seconds_count",
            "freshnets_predict_batch_samples_count",
            "freshnets_predict_batch_samples_sum",
        )
    }
    assert delta == {
        "freshnets_model_cache_misses_total": 1,
        "freshnets_model_rebuild_seconds_count": 1,
        "freshnets_predict_batch_samples_count": 1,
        "freshnets_predict_batch_samples_sum": 8,
    }
    assert entry.batcher.forwards == 1
    assert metric(None, after, "freshnets_model_cache_bytes") >= entry.nbytes


@pytest.mark.anyio
async def test_full_queue_answers_503_with_retry_after(
    make_app: MakeApp, keys: dict[str, str], digits_id: str
) -> None:
    app = make_app(batch_queue_limit=2, batch_max_size=1, batch_max_wait_ms=0)
    body = {"inputs": [[0.5] * 8] * 8}
    url, headers = f"/v1/models/{digits_id}/predict", auth(keys["alice"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post(url, json=body, headers=headers)).status_code == 200
        entry = get_serving(app).cache.peek(digits_id)
        gate = threading.Event()
        hook = entry.model.register_forward_pre_hook(lambda *_: gate.wait(10) and None)
        try:
            first = asyncio.ensure_future(client.post(url, json=body, headers=headers))
            while entry.batcher.pending < 1:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(client.post(url, json=body, headers=headers))
            while entry.batcher.pending < 2:
                await asyncio.sleep(0.01)
            refused = await client.post(url, json=body, headers=headers)
            gate.set()
            done = await asyncio.gather(first, second)
        finally:
            gate.set()
            hook.remove()
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1 and "queue full" in refused.text
    assert [r.status_code for r in done] == [200, 200]


def test_warm_up_loads_listed_models_before_ready(
    make_app: MakeApp, keys: dict[str, str], digits_id: str
) -> None:
    app = make_app(warmup_models=[digits_id, "missing-model"])
    assert not serving_ready(app)
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while not serving_ready(app) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert serving_ready(app)
        assert is_warm(app, digits_id)
        assert "missing-model" in get_serving(app).warmup_errors
        metrics = client.get("/metrics").text
    for name in (
        "freshnets_model_cache_hits_total",
        "freshnets_model_cache_misses_total",
        "freshnets_model_cache_evictions_total",
        "freshnets_model_cache_bytes",
        "freshnets_model_rebuild_seconds_bucket",
    ):
        assert name in metrics
    assert serving_ready(make_app())  # nothing to warm: ready at once


def test_model_route_shows_warmth_and_delete_drops_the_cache(
    client: TestClient, keys: dict[str, str], digits_id: str
) -> None:
    headers = auth(keys["alice"])
    assert client.get(f"/v1/models/{digits_id}", headers=headers).json()["warm"] is False
    body = {"inputs": [[0] * 8] * 8}
    assert client.post(f"/v1/models/{digits_id}/predict", json=body, headers=headers).is_success
    assert client.get(f"/v1/models/{digits_id}", headers=headers).json()["warm"] is True
    assert client.delete(f"/v1/models/{digits_id}", headers=headers).status_code == 204
    assert not is_warm(client.app, digits_id)
    r = client.post(f"/v1/models/{digits_id}/predict", json=body, headers=headers)
    assert r.status_code == 404


def test_readyz_waits_for_the_warm_up(
    make_app: MakeApp, keys: dict[str, str], digits_id: str
) -> None:
    app = make_app(warmup_models=[digits_id])
    client = TestClient(app)  # no lifespan: the warm-up never ran
    assert client.get("/readyz").json()["checks"]["serving"] == "warming up"
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while not serving_ready(app) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/readyz").json()["checks"]["serving"] == "ok"


def test_a_revoked_key_stops_predicting_within_the_ttl(
    client: TestClient,
    keys: dict[str, str],
    digits_id: str,
    session_factory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime

    from app.api.routes import predict as predict_route
    from app.db.models import ApiKey
    from app.security import hash_key

    monkeypatch.setattr(predict_route, "OWNER_TTL_S", 0.3)
    url, headers, body = (
        f"/v1/models/{digits_id}/predict",
        auth(keys["alice"]),
        {"inputs": [[0] * 8] * 8},
    )
    assert client.post(url, json=body, headers=headers).status_code == 200
    with session_factory() as session:
        key = session.query(ApiKey).filter(ApiKey.key_hash == hash_key(keys["alice"])).one()
        key.revoked_at = datetime.now(UTC)
        session.commit()
    time.sleep(0.35)
    r = client.post(url, json=body, headers=headers)
    assert r.status_code == 401 and "revoked" in r.text
