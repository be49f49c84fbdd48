"""freshcore speed and size on the mnist-cnn preset, batch 128, CPU (and CUDA where present).

Each ratio compares FreshNets (1/64) with the dense network measured in the same run. The steps of
the two models alternate and every figure is the median of many repeats, because the machine may be
shared with other processes. ``FRESHNETS_BENCH_THREADS`` pins torch's CPU threads (default: torch's
choice), ``FRESHNETS_BENCH_REPEATS`` sets the repeats.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import freshcore as fc
from freshcore.hashing import signed_bucket_index

PRESET = "mnist-cnn"
COMPRESSION = 1 / 64
BATCH = 128
REPEATS = int(os.environ.get("FRESHNETS_BENCH_REPEATS", "40"))


def _row(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    goal: str | None = None,
    best: float | None = None,
) -> dict[str, Any]:
    ratio = None if baseline is None else value / baseline
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
            "goal": goal, "best": best}  # fmt: skip


BEST: dict[str, float] = {}  # fastest repeat of the last timing of each key, for the "best" column


def _median_ms(fns: dict[str, Callable[[], Any]], device: str, repeats: int) -> dict[str, float]:
    """Median milliseconds of each function, run in alternation after a warm-up."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append((time.perf_counter() - start) * 1e3)
    BEST.update({k: min(v) for k, v in times.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def _train_step(model: fc.FreshModel, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _graphed_step(model: fc.FreshModel, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The whole training step (forward, backward, SGD) captured once as a CUDA graph: a
    replay launches every kernel at once, which removes the per-kernel launch cost that makes a
    short step's ratio large. Warmed up on a side stream first, as capture requires."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return graph.replay


def _graph_rows(
    fresh: fc.FreshModel, dense: fc.FreshModel, x: torch.Tensor, y: torch.Tensor, eager: float
) -> list[dict[str, Any]]:
    """CUDA-graphed training step against the graphed dense step, and against the eager one."""
    try:
        steps = {"fresh": _graphed_step(fresh, x, y), "dense": _graphed_step(dense, x, y)}
    except RuntimeError as exc:  # a capture that fails is a finding, not a crash
        return [_row(f"CUDA graph capture failed: {exc}"[:200], float("nan"), "")]
    t = _median_ms(steps, "cuda", REPEATS)
    return [
        _row("training step as one CUDA graph, freshnets / dense [cuda]", t["fresh"], "ms",
             t["dense"], "ratio <= 1.10", BEST["fresh"]),
        _row("freshnets training step, CUDA graph / eager [cuda]", t["fresh"], "ms", eager),
    ]  # fmt: skip


def _train_loop_rows() -> list[dict[str, Any]]:
    """freshcore.train itself on MNIST-shaped data, per step (epoch time over batches, the
    validation pass included), eager and with ``cuda_graph``: what a training job gets."""
    from types import SimpleNamespace

    from freshcore.train import TrainConfig, train

    gen = torch.Generator().manual_seed(0)
    n = 32 * BATCH
    data = SimpleNamespace(
        x_train=torch.rand(n, 1, 28, 28, generator=gen), y_train=torch.randint(0, 10, (n,)),
        x_val=torch.rand(512, 1, 28, 28, generator=gen), y_val=torch.randint(0, 10, (512,)),
        x_test=torch.rand(64, 1, 28, 28, generator=gen), y_test=torch.randint(0, 10, (64,)),
        mean=[0.5], std=[0.29],
    )  # fmt: skip
    times: dict[str, list[float]] = {}
    for _ in range(max(3, REPEATS // 10)):
        for method in ("freshnets", "dense"):
            for graph in (False, True):
                model = fc.build_model(PRESET, method, COMPRESSION if method != "dense" else 1.0)
                config = TrainConfig(epochs=2, batch_size=BATCH, device="cuda", cuda_graph=graph)
                result = train(model, data, config)
                per_step = 1e3 * result.history[-1].seconds / (n // BATCH)  # the second epoch
                times.setdefault(f"{method}{'-graph' if graph else ''}", []).append(per_step)
    t = {k: statistics.median(v) for k, v in times.items()}
    return [
        _row("freshcore.train step, freshnets / dense, both cuda_graph [cuda]",
             t["freshnets-graph"], "ms", t["dense-graph"], "ratio <= 1.10"),
        _row("freshcore.train step, freshnets / dense, both eager [cuda]",
             t["freshnets"], "ms", t["dense"]),
        _row("freshcore.train step of freshnets, cuda_graph / eager [cuda]",
             t["freshnets-graph"], "ms", t["freshnets"]),
    ]  # fmt: skip


def _eval(model: fc.FreshModel, x: torch.Tensor) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode():
            model(x)

    return forward


def _speed_rows(device: str) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    tag = f" [{device}, {torch.get_num_threads()} threads]" if device == "cpu" else f" [{device}]"
    fresh = fc.build_model(PRESET, "freshnets", COMPRESSION).to(device)
    dense = fc.build_model(PRESET, "dense").to(device)
    x = torch.rand(BATCH, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    t = _median_ms(
        {"fresh": _train_step(fresh, x, y), "dense": _train_step(dense, x, y)}, device, REPEATS
    )
    rows = [_row(f"training step, freshnets / dense{tag}", t["fresh"], "ms", t["dense"],
                 "ratio <= 1.10", BEST["fresh"])]  # fmt: skip
    if device == "cuda":
        rows += _graph_rows(fresh, dense, x, y, t["fresh"]) + _train_loop_rows()
    fresh.materialize()
    dense.eval()
    t = _median_ms({"fresh": _eval(fresh, x), "dense": _eval(dense, x)}, device, 2 * REPEATS)
    rows.append(_row(f"materialised eval forward, freshnets / dense{tag}", t["fresh"], "ms",
                     t["dense"], "ratio <= 1.02", BEST["fresh"]))  # fmt: skip
    t = _median_ms({"rebuild": fresh.materialize}, device, 2 * REPEATS)
    rows.append(_row(f"cold rebuild of all filters and fc matrices{tag}", t["rebuild"], "ms",
                     goal="value <= 2", best=BEST["rebuild"]))  # fmt: skip
    return rows


def _file_rows() -> list[dict[str, Any]]:
    fresh = fc.build_model(PRESET, "freshnets", COMPRESSION).eval()
    dense_bytes = 4 * fc.resolve_spec(PRESET).virtual_weights()
    rows = []
    for half in (False, True):
        data = fc.to_bytes(fresh, half=half)
        header = 8 + struct.unpack("<Q", data[:8])[0]
        target = COMPRESSION * dense_bytes * (0.5 if half else 1.0)
        kind = "float16" if half else "float32"
        rows.append(_row(f"file tensor bytes / (factor x dense bytes), {kind}",
                         len(data) - header, "B", target, "ratio <= 1.02"))  # fmt: skip
        rows.append(_row(f"file header (JSON metadata), {kind}", header, "B",
                         goal="value <= 4096"))  # fmt: skip
    data = fc.to_bytes(fresh)
    one = torch.rand(1, 1, 28, 28)

    def cold() -> None:
        model = fc.from_bytes(data).materialize()
        with torch.inference_mode():
            model(one)

    t = _median_ms({"cold": cold, "load": lambda: fc.from_bytes(data)}, "cpu", REPEATS)
    rows.append(_row("from_bytes (incl. hashing)", t["load"], "ms", best=BEST["load"]))
    rows.append(_row("cold first prediction: from_bytes + rebuild + 1 image", t["cold"], "ms",
                     goal="value <= 20", best=BEST["cold"]))  # fmt: skip
    for n in (max(m.virtual_weights for m in fresh.generated_layers()), 4_000_000):
        t = _median_ms({"hash": lambda n=n: signed_bucket_index(1, n, 7000)}, "cpu", REPEATS)
        rows.append(_row(f"hash {n:,} indices (bucket + sign)", t["hash"], "ms", best=BEST["hash"]))
    return rows


def _half_rows() -> list[dict[str, Any]]:
    """Accuracy change of float16 storage on a trained model (scikit-learn's real 8x8 digits)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    spec = {
        "input_shape": [1, 8, 8], "num_classes": 10,
        "layers": [
            {"type": "conv", "out_channels": 16, "kernel_size": 3, "padding": 1}, {"type": "relu"},
            {"type": "pool", "kernel_size": 2},
            {"type": "conv", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "relu"},
            {"type": "fc", "out_features": 64}, {"type": "relu"},
            {"type": "fc", "out_features": 10},
        ],
    }  # fmt: skip
    torch.manual_seed(0)
    model = fc.build_model(spec, "freshnets", 1 / 8)
    model.set_normalization(x[:1400].mean(dim=(0, 2, 3)), x[:1400].std(dim=(0, 2, 3)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(15):
        model.train()
        for idx in torch.randperm(1400).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    half = fc.from_bytes(fc.to_bytes(model, half=True))
    with torch.no_grad():
        full_logits, half_logits = model(x[1400:]), half(x[1400:])
    acc_full = (full_logits.argmax(1) == y[1400:]).float().mean().item()
    acc_half = (half_logits.argmax(1) == y[1400:]).float().mean().item()
    agree = (full_logits.argmax(1) == half_logits.argmax(1)).float().mean().item()
    return [
        _row("digits test accuracy, float32 file (freshnets 1/8)", acc_full, "acc"),
        _row("digits test accuracy, float16 file", acc_half, "acc", acc_full, "ratio >= 0.99"),
        _row("float16 vs float32: same predicted class", agree, "frac", goal="value >= 0.99"),
        _row("float16 vs float32: max logit difference",
             (full_logits - half_logits).abs().max().item(), "abs"),
    ]  # fmt: skip


def run() -> list[dict[str, Any]]:
    threads = os.environ.get("FRESHNETS_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    rows = _speed_rows("cpu") + _file_rows() + _half_rows()
    if torch.cuda.is_available():
        rows += _speed_rows("cuda")
    return rows
