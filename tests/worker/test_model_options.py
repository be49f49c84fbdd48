"""A job's model options reach the model: a conv-boost job trained by a real worker stores
freshcore's conv-boost plan, and its file reloads through the serving path with the predictions
of the model the file describes."""

from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient

import freshcore
from freshcore.build import parse_allocation, parse_budget_policy, plan_layers

from ..owners import bearer

CONV_BOOST = {"kind": "conv-boost", "conv_factor": 4.0}


def stored_values(entry: dict[str, Any]) -> int:
    """Stored weights of a plan entry: a FreshNets conv's buckets over its bands, a hashed fc's."""
    return sum(entry["bands"]) if entry["kind"] == "fresh-conv" else entry["buckets"]


def test_conv_boost_job_trains_reloads_and_serves(stack: Any) -> None:
    from app.main import create_app

    _, key = stack.owner_key()
    stack.start_worker("options")
    headers = bearer(key)
    with TestClient(create_app()) as client:
        body = stack.digits_job(model_options={"budget_policy": "conv-boost"})
        resp = client.post("/v1/jobs", headers=headers, json=body)
        assert resp.status_code == 202, resp.text
        job = stack.wait_state(resp.json()["id"], {"succeeded", "failed", "cancelled"}, 90)
        assert job.state == "succeeded", f"{job.error}\n{stack.worker_logs()}"
        model_id = client.get(f"/v1/jobs/{job.id}", headers=headers).json()["model_id"]
        model = client.get(f"/v1/models/{model_id}", headers=headers).json()
        blob = client.get(f"/v1/models/{model_id}/file", headers=headers).content

        # The file carries the options and freshcore's conv-boost plan, not the default one.
        spec = freshcore.resolve_spec(job.architecture)
        allocation = parse_allocation(None, "freshnets")
        boosted = plan_layers(spec, "freshnets", 1 / 8, 0, allocation, CONV_BOOST)
        same = plan_layers(spec, "freshnets", 1 / 8, 0, allocation, parse_budget_policy(None))
        header = freshcore.read_header(blob)
        assert header["budget_policy"] == CONV_BOOST and header["allocation"] == allocation
        loaded = freshcore.from_bytes(blob)
        assert loaded.plan == boosted and boosted != same

        # The size report's per-layer counts: the plan's stored weights plus the biases, and the
        # conv layer holds more than the same-factor split would give it.
        shapes = spec.check()
        layers = model["size_report"]["layers"]
        assert [layer["index"] for layer in layers] == [s.index for s in shapes if s.weights]
        for layer in layers:
            bias = shapes[layer["index"]].biases
            assert layer["stored_parameters"] == stored_values(boosted[layer["index"]]) + bias
        conv = layers[0]
        assert conv["kind"] == "fresh-conv"
        assert conv["stored_parameters"] > stored_values(same[conv["index"]]) + 16

        # Serving (from_bytes, to_dense, the micro-batcher) answers what the file's model computes.
        data = freshcore.data.load("digits", cache_dir=stack.tmp / "data" / "cache")
        samples = data.x_test[:16]
        pred = client.post(
            f"/v1/models/{model_id}/predict", headers=headers, json={"inputs": samples.tolist()}
        )
        assert pred.status_code == 200, pred.text
        served = np.array([p["probabilities"] for p in pred.json()["predictions"]])
        with torch.no_grad():
            local = torch.softmax(loaded(samples), dim=1).numpy()
        np.testing.assert_allclose(served, local, atol=1e-5)
        assert (served.argmax(1) == local.argmax(1)).all()


def test_width_job_trains_the_narrow_network_within_the_full_budget(stack: Any) -> None:
    """A half-width hashednets job with balanced buckets: both options reach the model file."""
    from app.main import create_app

    _, key = stack.owner_key()
    stack.start_worker("width")
    headers = bearer(key)
    with TestClient(create_app()) as client:
        options = {"width": 0.5, "balanced": True}
        body = stack.digits_job(method="hashednets", model_options=options)
        resp = client.post("/v1/jobs", headers=headers, json=body)
        assert resp.status_code == 202, resp.text
        job = stack.wait_state(resp.json()["id"], {"succeeded", "failed", "cancelled"}, 90)
        assert job.state == "succeeded", f"{job.error}\n{stack.worker_logs()}"
        model_id = client.get(f"/v1/jobs/{job.id}", headers=headers).json()["model_id"]
        blob = client.get(f"/v1/models/{model_id}/file", headers=headers).content
    loaded = freshcore.from_bytes(blob)
    assert [p.get("width") for p in loaded.plan if p] == [8, 32, 10]  # half of 16, 64; classes
    assert [p["kind"] for p in loaded.plan if p and p.get("balanced")] == ["hashed-conv"]  # not fc
    full = freshcore.build_model(job.architecture, "hashednets", 1 / 8, 0)
    budget = sum(p.numel() for p in full.parameters())
    assert abs(sum(p.numel() for p in loaded.parameters()) - budget) <= 0.02 * budget
