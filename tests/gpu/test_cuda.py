"""freshcore on CUDA against freshcore on the CPU: layers, models, files, conversions, training.

Every test is skipped without CUDA. The file stands alone (no conftest, nothing from app/, worker/
or other test folders), so a GPU machine that has only freshcore/ and tests/gpu/ runs it with
    python -m pytest tests/gpu --noconftest -q -p no:cacheprovider

Exact comparisons are made in float64, where neither side uses TF32, so CUDA must agree with the
CPU to rounding. Float32 is compared by relative norm with room for cuDNN's TF32 convolutions,
which PyTorch turns on by default. Exact resume on CUDA is checked under
``torch.use_deterministic_algorithms``. Without it, the backward of ``index_select``
(``index_add_``, with atomics) and some cuDNN kernels may add in a varying order, so two CUDA
runs may agree only within a tolerance; that case is tested too.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import freshcore
from freshcore.layers import (
    FreshConv2d,
    HashedConv2d,
    HashedLinear,
    LowFreqConv2d,
    LowRankConv2d,
    LowRankLinear,
    Normalize,
)
from freshcore.train import TrainConfig, evaluate, train

if torch.cuda.is_available():
    # deterministic cuBLAS (the resume test) needs this before the first cuBLAS call
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
F64 = {"rtol": 1e-9, "atol": 1e-11}  # float64 on two devices: rounding only
TF32_REL = 1e-2  # float32 with TF32 convolutions: relative norm of the difference


def _close_f32(got: Tensor, want: Tensor) -> None:
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    rel = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
    assert rel < TF32_REL, f"relative difference {rel:.2e}"


def _off_device(module: nn.Module, device: torch.device) -> list[str]:
    """Parameters, buffers (persistent or not) and plain tensor attributes not on ``device``;
    a plain attribute is reported even when it happens to be there (``.to`` would miss it)."""
    tensors = (*module.named_parameters(), *module.named_buffers())
    bad = [n for n, t in tensors if t.device.type != device.type]
    for name, m in module.named_modules():
        registered = {*m._parameters, *m._buffers}
        bad += [
            f"{name}.{k} (plain attribute)"
            for k, v in vars(m).items()
            if isinstance(v, Tensor) and k not in registered
        ]
    return bad


# --- layers ------------------------------------------------------------------------------------

LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...] | None]] = {
    "fresh-conv": (
        lambda: FreshConv2d(4, 6, 3, band_buckets=[6, 8, 6, 3, 0], seed=11, padding=1),
        (3, 4, 9, 9),
    ),
    "fresh-conv-strided-grouped": (
        lambda: FreshConv2d(
            4, 6, (3, 5), band_buckets=[4, 4, 3, 3, 2, 1, 0], seed=12, stride=2, groups=2
        ),
        (3, 4, 11, 11),
    ),
    "hashed-conv": (
        lambda: HashedConv2d(4, 6, 3, buckets=17, seed=13, padding=2, dilation=2),
        (3, 4, 9, 9),
    ),
    "lowfreq-conv": (lambda: LowFreqConv2d(4, 6, 5, kept=40, padding=2, bias=False), (3, 4, 9, 9)),
    "lowrank-conv": (lambda: LowRankConv2d(4, 6, 3, rank=2, padding=1), (3, 4, 9, 9)),
    "hashed-fc": (lambda: HashedLinear(40, 12, buckets=50, seed=14), (5, 40)),
    "lowrank-fc": (lambda: LowRankLinear(40, 12, rank=3), (5, 40)),
    "normalize": (lambda: Normalize(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.rand(4) + 0.5), None),
}


def _forward_backward(layer: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    """Output, input gradient and parameter gradients of ``sum(layer(x) * g)``."""
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    (out * g).sum().backward()
    grads = {f"grad:{n}": p.grad.detach() for n, p in layer.named_parameters()}
    assert x.grad is not None
    return {"out": out.detach(), "grad:x": x.grad.detach(), **grads}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_layer_forward_and_backward_match_the_cpu(name: str, dtype: torch.dtype) -> None:
    build, shape = LAYERS[name]
    torch.manual_seed(0)
    cpu = build().to(dtype)
    gpu = copy.deepcopy(cpu).to(CUDA)
    assert _off_device(gpu, CUDA) == []
    x = torch.randn(shape or (3, 4, 5, 5), dtype=dtype)
    with torch.no_grad():
        g = torch.randn_like(cpu(x))
    want = _forward_backward(cpu, x, g)
    got = _forward_backward(gpu, x.to(CUDA), g.to(CUDA))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].device.type == CUDA.type, key
        if dtype == torch.float64:
            torch.testing.assert_close(got[key].cpu(), want[key], **F64, msg=key)
        else:
            _close_f32(got[key], want[key])


@pytest.mark.parametrize("name", [n for n in LAYERS if n != "normalize"])
def test_layer_cache_lives_on_its_device(name: str) -> None:
    build, shape = LAYERS[name]
    assert shape is not None
    torch.manual_seed(0)
    layer = build().double().to(CUDA).eval()
    x = torch.randn(shape, dtype=torch.float64, device=CUDA)
    with torch.no_grad():
        want = layer(x)
        layer.materialize()
        weight, _ = layer._cache
        assert weight.device.type == CUDA.type and not weight.requires_grad
        torch.testing.assert_close(layer(x), want, **F64)
        layer.to("cpu")  # a move drops the cache: the CPU forward rebuilds on the CPU
        assert layer._cache is None
        torch.testing.assert_close(layer(x.cpu()), want.cpu(), **F64)


# --- whole models ------------------------------------------------------------------------------


def _model(method: str, seed: int = 0, **kwargs: Any) -> freshcore.FreshModel:
    compression = 1.0 if method == "dense" else 1 / 16
    return freshcore.build_model("mnist-cnn", method, compression, seed, **kwargs)


def _digits_model(method: str, seed: int = 0) -> freshcore.FreshModel:
    return _model(method, seed, input_shape=(1, 8, 8), num_classes=10)


def _mnist_batch(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(16, 1, 28, 28, generator=gen, dtype=dtype)
    return x, torch.randint(0, 10, (16,), generator=gen)


@pytest.mark.parametrize("method", freshcore.METHODS)
def test_model_logits_and_gradients_match_the_cpu(method: str) -> None:
    cpu = _model(method, seed=3)
    cpu.set_normalization([0.13], [0.31])
    cpu = cpu.double().eval()  # eval: dropout off, so both devices compute the same function
    gpu = copy.deepcopy(cpu).to(CUDA)
    assert _off_device(gpu, CUDA) == []
    x, y = _mnist_batch()

    def run(model: nn.Module, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
        model.zero_grad(set_to_none=True)
        logits = model(x.to(device))
        F.cross_entropy(logits, y.to(device)).backward()
        return logits.detach(), {n: p.grad for n, p in model.named_parameters()}

    want, want_grads = run(cpu, torch.device("cpu"))
    got, got_grads = run(gpu, CUDA)
    torch.testing.assert_close(got.cpu(), want, **F64)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name].cpu(), grad, **F64, msg=name)

    with torch.no_grad():
        gpu.materialize()  # cached filters on the GPU, same logits
        for layer in gpu.generated_layers():
            assert layer._cache is not None and layer._cache[0].device.type == CUDA.type
        torch.testing.assert_close(gpu(x.to(CUDA)).cpu(), want, **F64)
        back = gpu.to("cpu")  # the move drops the GPU caches
        torch.testing.assert_close(back(x), want, **F64)


@pytest.mark.parametrize("method", freshcore.METHODS)
def test_float32_model_runs_on_cuda_like_on_the_cpu(method: str) -> None:
    cpu = _model(method, seed=4).eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    x, _ = _mnist_batch(torch.float32)
    with torch.no_grad():
        want = cpu(x)
        got = gpu(x.to(CUDA))
        _close_f32(got, want)
        with torch.inference_mode():  # the way serving materialises
            gpu.materialize()
            _close_f32(gpu(x.to(CUDA)), want)


# --- files and conversions ---------------------------------------------------------------------


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("method", freshcore.METHODS)
def test_model_file_of_a_cuda_model(method: str, half: bool, tmp_path) -> None:
    cpu = _model(method, seed=6)
    cpu.set_normalization([0.2], [0.4])
    cpu.class_names = [f"class {i}" for i in range(10)]
    cpu.eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    blob = freshcore.to_bytes(gpu, half=half)
    assert blob == freshcore.to_bytes(cpu, half=half)
    assert freshcore.save(gpu, tmp_path / "m.safetensors", half=half) == len(blob)
    assert (tmp_path / "m.safetensors").read_bytes() == blob
    assert next(gpu.parameters()).device.type == CUDA.type  # writing did not move the model

    back = freshcore.from_bytes(blob)
    assert back.class_names == cpu.class_names
    params = {n for n, _ in cpu.named_parameters()}
    for name, want in cpu.state_dict().items():
        if half and name in params:
            want = want.half().float()
        assert torch.equal(back.state_dict()[name], want), name

    loaded = freshcore.load(tmp_path / "m.safetensors").to(CUDA)
    assert _off_device(loaded, CUDA) == []
    x, _ = _mnist_batch(torch.float32)
    with torch.no_grad():
        on_gpu = loaded(x.to(CUDA))
        _close_f32(on_gpu, back(x))
        if not half:  # the same weights on the same device: the same logits
            torch.testing.assert_close(on_gpu, gpu(x.to(CUDA)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", freshcore.METHODS)
def test_to_dense_of_a_cuda_model(method: str) -> None:
    cpu = _model(method, seed=7)
    cpu.set_normalization([0.3], [0.2])
    cpu = cpu.double().eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    dense = freshcore.to_dense(gpu)
    assert _off_device(dense, CUDA) == []
    dense_cpu = freshcore.to_dense(cpu)
    for (name, a), b in zip(
        dense.state_dict().items(), dense_cpu.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a.cpu(), b, **F64, msg=name)
    x, _ = _mnist_batch()
    with torch.no_grad():
        torch.testing.assert_close(dense(x.to(CUDA)), gpu(x.to(CUDA)), **F64)
        torch.testing.assert_close(dense(x.to(CUDA)).cpu(), dense_cpu(x), **F64)


@pytest.mark.parametrize(
    "method", [m for m in freshcore.METHODS if m not in ("dense", "equivalent")]
)
def test_compress_dense_of_a_cuda_model(method: str) -> None:
    dense = _model("dense", seed=8)
    dense.set_normalization([0.25], [0.35])
    want = freshcore.compress_dense(dense, method, 1 / 16, seed=1)
    got = freshcore.compress_dense(copy.deepcopy(dense).to(CUDA), method, 1 / 16, seed=1)
    assert _off_device(got, CUDA) == []  # it lives where the dense model does
    for (name, a), b in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b), name  # the projection runs on the CPU either way


# --- training ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """scikit-learn's bundled 8x8 digits through freshcore's registry: nothing is downloaded."""
    from freshcore.data import load

    return load("digits", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("method", ["freshnets", "hashednets", "dense"])
def test_training_on_cuda_learns_digits(digits: Any, method: str) -> None:
    model = _digits_model(method)
    config = TrainConfig(epochs=3, batch_size=32, dropout=0.0, device=CUDA.type)
    result = train(model, digits, config)
    assert result.test_accuracy > 0.8, [m.to_dict() for m in result.history]  # chance: 0.1
    assert _off_device(model, torch.device("cpu")) == []  # back on the device it came from
    assert not model.training
    # a CUDA model with CPU data: evaluate moves the batches; same weights, same accuracy
    model.to(CUDA)
    loss, accuracy = evaluate(model, digits.x_test, digits.y_test)
    assert accuracy == pytest.approx(result.test_accuracy, abs=1.5 / len(digits.y_test))
    assert loss == pytest.approx(result.test_loss, rel=1e-3)


@pytest.mark.parametrize("method", freshcore.METHODS)
def test_every_method_trains_on_cuda(digits: Any, method: str) -> None:
    """Augmentation, the preset's dropout and Adam on the GPU; a model that starts there stays."""
    model = _digits_model(method).to(CUDA)
    config = TrainConfig(epochs=2, batch_size=64, optimizer="adam", augment=True, device=CUDA.type)
    batches: list[int] = []
    result = train(model, digits, config, on_batch=lambda done, total: batches.append(done))
    assert len(result.history) == 2 and batches[-1] == math.ceil(len(digits.y_train) / 64)
    assert all(math.isfinite(m.train_loss) and math.isfinite(m.val_loss) for m in result.history)
    assert 0 <= result.test_accuracy <= 1
    assert _off_device(model, CUDA) == []
    assert not model.training


@contextlib.contextmanager
def _deterministic() -> Iterator[list[warnings.WarningMessage]]:
    """Deterministic algorithms (warn only) for the block; yields the warnings it raised."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


_NONDETERMINISTIC: set[str] = set()  # across tests: PyTorch may warn only once per operation


def _nondeterministic_ops(caught: list[warnings.WarningMessage]) -> list[str]:
    _NONDETERMINISTIC.update(str(w.message) for w in caught if "determinis" in str(w.message))
    return sorted(_NONDETERMINISTIC)


def _timeless(result: freshcore.TrainResult) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in result.history]


def _stop_at(epoch: int, saved: list[bytes]) -> Callable[..., bool]:
    """An ``on_epoch`` that keeps the checkpoint of ``epoch`` in ``saved`` and stops there."""

    def stop(metrics: freshcore.EpochMetrics, checkpoint: Callable[[], bytes]) -> bool:
        if metrics.epoch == epoch:
            saved.append(checkpoint())
            return True
        return False

    return stop


@pytest.mark.parametrize(
    ("settings", "exact"),
    [
        ({"augment": True}, True),  # the preset's dropout: the CUDA random stream resumes too
        ({"optimizer": "adam", "schedule": "step", "warmup_epochs": 1, "step_size": 1}, True),
        ({"augment": True}, False),  # default (nondeterministic) kernels: within a tolerance
    ],
    ids=["sgd-augment-dropout", "adam-step-warmup", "sgd-nondeterministic"],
)
def test_resume_from_a_cuda_checkpoint(digits: Any, settings: dict, exact: bool) -> None:
    config = TrainConfig(epochs=3, batch_size=64, device=CUDA.type, **settings)
    saved: list[bytes] = []
    stop_at_two = _stop_at(2, saved)

    with _deterministic() if exact else contextlib.nullcontext([]) as caught:
        straight_model = _digits_model("freshnets")
        straight = train(straight_model, digits, config)
        assert train(_digits_model("freshnets"), digits, config, stop_at_two).stopped
        resumed_model = _digits_model("freshnets")
        with torch.no_grad():
            for p in resumed_model.parameters():
                p.add_(1.0)  # other weights: the checkpoint replaces them
        torch.manual_seed(12345)  # and the global random state must not matter
        torch.cuda.manual_seed_all(12345)
        resumed = train(resumed_model, digits, config, resume=saved[0])
    unsupported = _nondeterministic_ops(caught) if exact else []
    pairs = zip(
        straight_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    )
    if exact and not unsupported:
        for (name, a), b in pairs:
            assert torch.equal(a, b), name
        assert _timeless(resumed) == _timeless(straight)
        assert resumed.test_accuracy == straight.test_accuracy
    else:
        if exact:
            warnings.warn(
                f"no deterministic CUDA kernel for: {unsupported}; "
                "resume compared within a tolerance",
                stacklevel=1,
            )
        for (name, a), b in pairs:
            if a.is_floating_point():
                rel = ((a - b).norm() / a.norm().clamp_min(1e-12)).item()
                assert rel < 2e-2, f"{name}: relative difference {rel:.2e}"
        assert abs(resumed.test_accuracy - straight.test_accuracy) < 0.05

    # the checkpoint holds CPU tensors only: a CPU machine resumes it
    on_cpu = train(
        _digits_model("freshnets"), digits, replace(config, device="cpu"), resume=saved[0]
    )
    assert len(on_cpu.history) == 3 and on_cpu.history[:2] == resumed.history[:2]
    assert math.isfinite(on_cpu.history[2].train_loss)


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_reproduce_run_on_cuda(digits: Any, tmp_path, cuda_graph: bool) -> None:
    """The reproduce harness's path: a dense teacher trained and saved, a student distilled from
    it on the GPU, the float16 round trip evaluated on the run's device, the files written;
    with ``cuda_graph`` (`freshnets reproduce --cuda-graph`) both train graphed, and say so."""
    from freshcore.reproduce.plan import RunSpec
    from freshcore.reproduce.runner import DataCache, RunStore, run_one

    store = RunStore(tmp_path)
    data = DataCache(lambda name: digits)
    base = {"epochs": 2, "batch_size": 32, "dropout": 0.0}
    teacher = RunSpec("digits", "dense", "1", 0, train=base)
    student = RunSpec(
        "digits", "freshnets", "1/16", 0, train={**base, "distill_alpha": 0.5},
        teacher=teacher.to_dict(),
    )  # fmt: skip
    record = run_one(student, store, data, device=CUDA.type, cuda_graph=cuda_graph)
    result = record["result"]
    assert record["machine"]["cuda_graph"] is cuda_graph
    assert store.get(teacher)["machine"]["cuda_graph"] is cuda_graph
    assert not result["diverged"], result
    assert result["test_error"] < 0.3, result
    assert abs(result["test_error_fp16"] - result["test_error"]) <= 0.02, result
    assert record["machine"]["gpu"]
    for spec in (teacher, student):
        assert store.run_path(spec).exists() and store.model_path(spec).exists()
        assert not store.checkpoint_path(spec).exists()
    model = freshcore.load(store.model_path(student))
    assert model.method == "freshnets" and model.meta["run_key"] == student.key()


# --- the training step as a CUDA graph ---------------------------------------------------------


def _relative_gap(a: nn.Module, b: nn.Module) -> dict[str, float]:
    pairs = zip(a.state_dict().items(), b.state_dict().values(), strict=True)
    return {
        name: ((x - y).norm() / x.norm().clamp_min(1e-12)).item()
        for (name, x), y in pairs
        if x.is_floating_point()
    }


@pytest.mark.parametrize("method", freshcore.METHODS)
def test_cuda_graph_trains_like_the_eager_loop(digits: Any, method: str) -> None:
    """cuda_graph replays the captured forward and backward of full batches (the last, partial
    batch of each epoch runs eagerly): with the preset's dropout and random shifts, a graphed run
    lands where the eager one does, the same kernels in the same order, within a tolerance
    (cuDNN may pick other algorithms under capture), and learns as well."""
    config = TrainConfig(epochs=3, batch_size=32, dropout=0.1, augment=True, device=CUDA.type)
    assert len(digits.y_train) % 32 != 0  # a partial batch every epoch
    with _deterministic():
        eager_model, graph_model = _digits_model(method), _digits_model(method)
        eager = train(eager_model, digits, config)
        graphed = train(graph_model, digits, replace(config, cuda_graph=True))
    gaps = _relative_gap(eager_model, graph_model)
    assert max(gaps.values()) < 5e-2, gaps
    assert abs(graphed.test_accuracy - eager.test_accuracy) < 0.05
    assert all(math.isfinite(m.train_loss) for m in graphed.history)
    assert [m.epoch for m in graphed.history] == [1, 2, 3]
    if method in ("freshnets", "hashednets", "dense"):
        assert graphed.test_accuracy > 0.5  # chance: 0.1


@pytest.fixture(scope="module")
def digits28(digits: Any) -> Any:
    """The digits at 28x28 (bilinear): `mnist-allconv` pools a 7x7 map, which 8x8 input lacks."""

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)

    info = replace(digits.info, input_shape=(1, 28, 28))
    return replace(
        digits,
        info=info,
        x_train=up(digits.x_train),
        x_val=up(digits.x_val),
        x_test=up(digits.x_test),
    )


@pytest.mark.parametrize(
    "method, options",
    [
        ("freshnets", {"width": 0.5, "balanced": True}),
        ("freshnets-uniform", {"width": 0.25, "balanced": True}),
        ("hashednets", {"width": 0.25, "balanced": True}),
        ("lowfreq", {"width": 0.5}),
        ("lrd", {"width": 0.5}),
    ],
)
def test_cuda_graph_trains_the_conv_heavy_table_models(
    digits28: Any, method: str, options: dict[str, Any]
) -> None:
    """The conv-heavy table's second stage (`mnist-allconv`, narrow and balanced networks)
    trains graphed on a GPU: its runs land where eager ones do, so both kinds share a table."""
    config = TrainConfig(epochs=3, batch_size=32, dropout=0.0, device=CUDA.type)

    def model() -> freshcore.FreshModel:
        return freshcore.build_model(
            "mnist-allconv", method, 1 / 16, 0, input_shape=(1, 28, 28), num_classes=10, **options
        )

    with _deterministic():
        eager_model, graph_model = model(), model()
        eager = train(eager_model, digits28, config)
        graphed = train(graph_model, digits28, replace(config, cuda_graph=True))
    gaps = _relative_gap(eager_model, graph_model)
    assert max(gaps.values()) < 5e-2, gaps
    assert abs(graphed.test_accuracy - eager.test_accuracy) < 0.05
    assert graphed.test_accuracy > 0.5  # chance: 0.1


def test_cuda_graph_distils_and_resumes(digits: Any) -> None:
    """A distilled, graphed run: the teacher's outputs are inputs of the graph; a checkpoint of a
    graphed run resumes (graphed again) to an uninterrupted run's weights within a tolerance."""
    teacher = _digits_model("dense").to(CUDA)
    train(teacher, digits, TrainConfig(epochs=2, batch_size=32, dropout=0.0, device=CUDA.type))
    config = TrainConfig(
        epochs=3, batch_size=32, dropout=0.0, distill_alpha=0.5, device=CUDA.type, cuda_graph=True
    )
    saved: list[bytes] = []
    stop_at_two = _stop_at(2, saved)

    with _deterministic():  # else index_add's atomics make two runs drift apart
        straight_model = _digits_model("freshnets")
        straight = train(straight_model, digits, config, teacher=teacher)
        assert straight.test_accuracy > 0.8
        stopped = train(_digits_model("freshnets"), digits, config, stop_at_two, teacher=teacher)
        assert stopped.stopped
        resumed_model = _digits_model("freshnets")
        resumed = train(resumed_model, digits, config, teacher=teacher, resume=saved[0])
    assert len(resumed.history) == 3
    assert max(_relative_gap(straight_model, resumed_model).values()) < 5e-2
    assert abs(resumed.test_accuracy - straight.test_accuracy) < 0.05


class _Syncing(nn.Module):
    """A model whose forward reads a value back to the host: it cannot be captured. The run
    says so before any capture, and the process trains (with dropout) normally afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _digits_model("dense")

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * (1.0 if x.sum().item() >= 0 else -1.0)


def test_uncapturable_model_is_named(digits: Any) -> None:
    from freshcore.train import TrainConfigError

    with pytest.raises(TrainConfigError, match="cuda_graph") as info:
        train(_Syncing(), digits, TrainConfig(epochs=1, batch_size=64, cuda_graph=True))
    assert info.value.field == "cuda_graph"
    eager = train(_Syncing(), digits, TrainConfig(epochs=1, batch_size=64, dropout=0.5))
    assert len(eager.history) == 1
