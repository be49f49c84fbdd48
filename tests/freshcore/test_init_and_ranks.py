"""Fair baselines: generated weights start at the dense init's variance; lrd's ranks are sane."""

import pytest
import torch

import freshcore as fc
from freshcore.layers import (
    FreshConv2d,
    HashedConv2d,
    HashedLinear,
    LowFreqConv2d,
    LowRankConv2d,
    LowRankLinear,
)


def _layers():
    return [
        LowFreqConv2d(64, 64, 5, kept=64 * 64 * 25 // 16),  # 1/16: mostly DC coefficients
        LowFreqConv2d(64, 64, 5, kept=64 * 64 * 25 // 64),  # 1/64: fewer than one per slice
        FreshConv2d(64, 64, 5, band_buckets=[400, 300, 200, 100, 50, 0, 0, 0, 0], seed=3),
        HashedConv2d(64, 64, 5, buckets=1000, seed=4),
        HashedLinear(1024, 150, buckets=2000, seed=5),
        LowRankConv2d(64, 64, 5, rank=4),
        LowRankLinear(1024, 150, rank=2),
    ]


@pytest.mark.parametrize("layer", _layers(), ids=lambda m: f"{type(m).__name__}")
def test_rebuilt_weight_has_the_dense_init_variance(layer):
    # PyTorch's default conv/linear init is U(+-1/sqrt(fan_in)): variance 1 / (3 fan_in).
    # Structural zeros must be made up for, or lowfreq starts with 1/16 of it at 1/16.
    weight = layer.rebuild_weight().detach()
    fan_in = weight[0].numel()
    ratio = weight.var().item() * 3 * fan_in
    assert 0.8 < ratio < 1.25, ratio


def test_project_is_the_least_squares_inverse_of_the_rebuild():
    layer = LowFreqConv2d(8, 8, 3, kept=100)
    target = layer.rebuild_weight().detach().clone()
    with torch.no_grad():
        layer.buckets.zero_()
    layer.project(target)
    torch.testing.assert_close(layer.rebuild_weight().detach(), target)


def _ranks(model):
    shapes = [s for s in model.spec.check() if s.weights]
    out = []
    for s in shapes:
        entry = model.plan[s.index]
        rows = s.out_shape[0]
        cols = s.weights // rows
        out.append((entry, rows, cols))
    return out


@pytest.mark.parametrize(
    ("input_shape", "compression"),
    [((1, 28, 28), "1/16"), ((1, 28, 28), "1/64"), ((1, 8, 8), "1/16"), ((3, 32, 32), "1/16")],
)
def test_lrd_ranks_are_useful_and_fit_the_budget(input_shape, compression):
    model = fc.build_model("mnist-cnn", "lrd", compression, input_shape=input_shape)
    dense = fc.size_report(fc.build_model("mnist-cnn", "dense", input_shape=input_shape))
    report = fc.size_report(model)
    budget = round(fc.parse_compression(compression) * dense.stored_parameters)
    assert abs(report.stored_parameters - budget) <= 0.02 * budget
    for entry, rows, cols in _ranks(model):
        if entry["kind"].startswith("lowrank-"):
            # factors that cost as much as the dense weight are never chosen: it is stored dense
            assert entry["rank"] * (rows + cols) < rows * cols
        else:
            assert entry["kind"] in ("conv", "fc")
    ranks = [entry.get("rank", min(rows, cols)) for entry, rows, cols in _ranks(model)]
    # a rank-1 classifier's logits lie on a line (two classes at most can win): never chosen
    assert ranks[-1] >= 2, ranks
    if compression == "1/16":  # enough budget for rank >= 2 everywhere and a full classifier
        assert min(ranks) >= 2 and ranks[-1] >= 9, ranks


def test_lrd_with_dense_layers_round_trips():
    model = fc.build_model("mnist-cnn", "lrd", "1/16", seed=1)
    assert {"kind": "conv"} in model.plan and {"kind": "fc"} in model.plan
    again = fc.from_bytes(fc.to_bytes(model))
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert fc.size_report(again).stored_parameters == fc.size_report(model).stored_parameters
