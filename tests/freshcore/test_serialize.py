import contextlib
import json
import struct

import pytest
import torch

import freshcore as fc
from freshcore.serialize import ModelFormatError


def _model(method="freshnets", preset="mnist-cnn", **kw):
    model = fc.build_model(preset, method, 1 / 16, seed=5, **kw)
    model.set_normalization([0.1307], [0.3081])
    model.class_names = [f"digit {i}" for i in range(10)]
    model.meta = {"dataset": "mnist", "accuracy": 0.99}
    with torch.no_grad():  # trained-looking values, not the init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("method", fc.METHODS)
def test_round_trip_bit_identical_logits(method, tmp_path):
    model = _model(method)
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
    size = fc.save(model, tmp_path / "m.fnet")
    loaded = fc.load(tmp_path / "m.fnet")
    assert size == (tmp_path / "m.fnet").stat().st_size
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
        loaded.materialize()
        assert torch.equal(loaded(x), want)
    assert loaded.class_names == model.class_names and loaded.meta == model.meta
    assert loaded.method == method and loaded.plan == model.plan and loaded.seed == 5
    assert not loaded.training


def test_file_stores_seeds_not_indices_and_is_compact():
    model = _model(budget_policy="conv-boost", allocation={"shape": "exponential", "decay": 1.0})
    data = fc.to_bytes(model)
    header = fc.read_header(data)
    assert header["format_version"] == fc.FORMAT_VERSION
    assert header["allocation"] == {"shape": "exponential", "decay": 1.0}
    assert header["budget_policy"]["kind"] == "conv-boost"
    assert header["normalization"]["mean"] == pytest.approx([0.1307])
    assert all("seed" in p for p in header["plan"] if p and p["kind"] != "lowfreq-conv")
    stored = sum(p.numel() for p in model.parameters())
    n = struct.unpack("<Q", data[:8])[0]
    tensor_bytes = len(data) - 8 - n
    assert tensor_bytes == 4 * stored + 4 * 2  # + the two normalisation values
    assert n < 4096
    loaded = fc.from_bytes(data)
    assert loaded.budget_policy == model.budget_policy


def test_half_precision_halves_the_file():
    model = _model()
    full, half = fc.to_bytes(model), fc.to_bytes(model, half=True)
    assert len(half) < 0.55 * len(full) + 2048
    loaded = fc.from_bytes(half)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=2e-2, rtol=1e-2)
    assert loaded.body[0].buckets.dtype == torch.float32


def _replace_header(data: bytes, edit) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    raw = json.loads(data[8 : 8 + n])
    inner = json.loads(raw["__metadata__"]["freshnets"])
    edit(inner, raw)
    raw["__metadata__"]["freshnets"] = json.dumps(inner)
    new = json.dumps(raw).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + data[8 + n :]


def test_refuses_truncated_garbage_and_wrong_version():
    data = fc.to_bytes(_model())
    for bad, match in [
        (b"", "shorter"),
        (data[:5], "shorter"),
        (data[:100], "truncated"),
        (data[: len(data) - 10], "corrupt"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "not JSON"),
        (struct.pack("<Q", 2) + b"{}", "no 'freshnets'"),
        (_replace_header(data, lambda h, r: h.update(format_version=99)), "version 99"),
        (_replace_header(data, lambda h, r: h.update(format="onnx")), "malformed"),
    ]:
        with pytest.raises(ModelFormatError, match=match):
            fc.from_bytes(bad)
    with pytest.raises(ModelFormatError):
        fc.from_bytes("not bytes")


def test_refuses_inconsistent_files():
    data = fc.to_bytes(_model())

    def more_buckets(h, r):
        h["plan"][0]["bands"][0] += 1

    def other_spec(h, r):
        h["spec"]["layers"][0]["out_channels"] = 16

    def bad_layer(h, r):
        h["spec"]["layers"][1] = {"type": "teleport"}

    def bad_names(h, r):
        h["class_names"] = ["a", "b"]

    def bad_plan(h, r):
        h["plan"] = h["plan"][:2]

    def bad_balanced(h, r):
        h["plan"][0]["balanced"] = 1

    for edit, match in [
        (more_buckets, "shape"),
        (other_spec, "shape"),
        (bad_layer, "layer 1"),
        (bad_names, "class_names"),
        (bad_plan, "cannot rebuild"),
        (bad_balanced, "balanced=1 is not a boolean"),
    ]:
        with pytest.raises(ModelFormatError, match=match):
            fc.from_bytes(_replace_header(data, edit))


def test_random_corruption_never_escapes_as_another_error():
    data = bytearray(fc.to_bytes(_model()))
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        bad = bytearray(data)
        pos = int(torch.randint(0, len(bad), (1,), generator=gen))
        bad[pos] ^= 1 << int(torch.randint(0, 8, (1,), generator=gen))
        with contextlib.suppress(ModelFormatError):  # anything else fails the test
            fc.from_bytes(bytes(bad))


def test_refuses_hostile_sizes_before_allocating():
    data = fc.to_bytes(_model())

    def huge_fc(h, r):
        h["spec"]["layers"][6]["out_features"] = 10**6  # 3e9 virtual weights

    def huge_buckets(h, r):
        h["plan"][6]["buckets"] = 10**12

    for edit, match in [(huge_fc, "cap"), (huge_buckets, "outside")]:
        with pytest.raises(ModelFormatError, match=match):
            fc.from_bytes(_replace_header(data, edit))
    with pytest.raises(ModelFormatError, match="cap"):
        fc.from_bytes(data, max_virtual_weights=1000)
