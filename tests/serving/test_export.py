"""GET /v1/models/{id}/export: the rebuilt dense network predicts what the service predicts,
under onnxruntime, TorchScript and a plain state dict."""

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

import freshcore

from .conftest import DIGIT_NAMES, MakeApp, StoreModel, auth


@pytest.fixture
def setup(make_app: MakeApp, keys: dict[str, str], store_model: StoreModel, digits_model):
    client = TestClient(make_app())
    return client, store_model(digits_model), auth(keys["alice"])


def served_probabilities(client: TestClient, model_id: str, headers, x: np.ndarray) -> np.ndarray:
    r = client.post(f"/v1/models/{model_id}/predict", json={"inputs": x.tolist()}, headers=headers)
    assert r.status_code == 200, r.text
    return np.array([p["probabilities"] for p in r.json()["predictions"]])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_onnx_matches_the_service_under_onnxruntime(setup, digits) -> None:
    client, model_id, headers = setup
    x = digits[0][1500:1537]  # an odd batch size: the batch axis is dynamic
    r = client.get(f"/v1/models/{model_id}/export?format=onnx", headers=headers)
    assert r.status_code == 200, r.text
    assert f"freshnets-{model_id}.onnx" in r.headers["content-disposition"]
    proto = onnx.load_from_string(r.content)
    onnx.checker.check_model(proto)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["class_names"] == DIGIT_NAMES and meta["input_shape"] == [1, 8, 8]
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x})
    expected = served_probabilities(client, model_id, headers, x)
    assert np.allclose(softmax(logits), expected, atol=1e-5)
    assert (logits.argmax(1) == expected.argmax(1)).all()


# The export module uses torch.jit knowingly: TorchScript is still the portable format users load.
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_and_dense_safetensors_match(setup, digits, digits_model) -> None:
    client, model_id, headers = setup
    x = digits[0][1500:1510]
    expected = served_probabilities(client, model_id, headers, x)

    r = client.get(f"/v1/models/{model_id}/export?format=torchscript", headers=headers)
    assert r.status_code == 200, r.text
    extra = {"freshnets.json": ""}
    scripted = torch.jit.load(io.BytesIO(r.content), _extra_files=extra)
    assert json.loads(extra["freshnets.json"])["num_classes"] == 10
    with torch.inference_mode():
        got = torch.softmax(scripted(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(got, expected, atol=1e-5)

    r = client.get(f"/v1/models/{model_id}/export?format=dense-safetensors", headers=headers)
    assert r.status_code == 200, r.text
    state = load_safetensors(r.content)
    dense = freshcore.to_dense(digits_model.eval())
    dense.load_state_dict(state)  # the same layout, every tensor present
    with torch.inference_mode():
        got = torch.softmax(dense(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    header_len = int.from_bytes(r.content[:8], "little")
    header = json.loads(r.content[8 : 8 + header_len])["__metadata__"]
    assert json.loads(header["layout"])[1]["module"] == "Conv2d"
    assert json.loads(header["spec"])["name"] == "digits-tiny"


def test_export_refusals(setup, keys: dict[str, str]) -> None:
    client, model_id, headers = setup
    r = client.get(f"/v1/models/{model_id}/export?format=pickle", headers=headers)
    assert r.status_code == 422 and "format" in r.text
    r = client.get(f"/v1/models/{model_id}/export", headers=auth(keys["bob"]))
    assert r.status_code == 404
