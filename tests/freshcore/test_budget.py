import numpy as np
import pytest

from freshcore import build_model
from freshcore.budget import (
    BetaShape,
    ConvBoostPolicy,
    ExponentialShape,
    UniformPolicy,
    UniformShape,
    band_buckets,
    layer_budgets,
    water_fill,
)

SHAPES = [UniformShape(), ExponentialShape(decay=0.5), ExponentialShape(decay=3.0),
          BetaShape(a=1, b=3), BetaShape(a=2, b=2), BetaShape(a=0.5, b=5),
          ExponentialShape(decay=1.0, min_rate=0.1), ExponentialShape(decay=0.5, min_rate=0.3),
          BetaShape(a=1, b=3, min_rate=0.05),
          ExponentialShape(decay=2.0, min_rate=1.0)]  # fmt: skip


def _sizes(slices: int, k: int = 5) -> list[int]:
    return [slices * n for n in np.bincount(np.add.outer(np.arange(k), np.arange(k)).ravel())]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("slices", [1, 32, 2048])
@pytest.mark.parametrize("fraction", [1 / 256, 1 / 64, 1 / 16, 1 / 4, 0.6, 0.95, 1.0])
def test_band_buckets_exact_monotone_capped(shape, slices, fraction):
    sizes = _sizes(slices)
    total = max(1, round(fraction * sum(sizes)))
    k = band_buckets(sizes, total, shape)
    assert sum(k) == total
    rates = [a / n for a, n in zip(k, sizes, strict=True)]
    assert all(0 <= r <= 1 for r in rates)
    assert all(rates[b] <= rates[b - 1] + 1e-12 for b in range(1, len(rates))), rates


def test_water_filling_hands_on_the_excess():
    sizes = np.array([10, 20, 30, 40])
    rates = water_fill(sizes, np.array([8.0, 4.0, 1.0, 0.5]), 50)
    assert rates[0] == 1.0
    assert np.isclose((rates * sizes).sum(), 50)
    assert (np.diff(rates) <= 1e-12).all()


def test_uniform_rates_are_equal_and_decay_front_loads():
    sizes = _sizes(64)
    k = band_buckets(sizes, sum(sizes) // 8, UniformShape())
    rates = np.array(k) / np.array(sizes)
    assert rates.max() - rates.min() < 0.01
    k = band_buckets(sizes, sum(sizes) // 8, ExponentialShape(decay=1.0))
    assert k[0] / sizes[0] > 4 * k[-1] / sizes[-1]


@pytest.mark.parametrize("shape", [s for s in SHAPES if getattr(s, "min_rate", 0) > 0])
@pytest.mark.parametrize("fraction", [1 / 64, 1 / 16, 1 / 4, 0.6])
def test_cut_off_leaves_no_band_under_min_rate(shape, fraction):
    """Every band is empty or at least min_rate, except the last kept one when the lower bands
    alone could not hold the budget; the cut-off bands are a suffix."""
    sizes = _sizes(2048)
    total = round(fraction * sum(sizes))
    k = band_buckets(sizes, total, shape)
    assert sum(k) == total
    rates = [a / n for a, n in zip(k, sizes, strict=True)]
    kept = [b for b, r in enumerate(rates) if r > 0]
    assert kept == list(range(len(kept)))
    needed = int(np.searchsorted(np.cumsum(sizes), total)) + 1  # the fewest bands holding total
    if len(kept) > needed:
        assert min(rates[b] for b in kept) >= shape.min_rate - 1 / sizes[kept[-1]]


def test_cut_off_drops_what_plain_decay_hashes_thinly():
    sizes = _sizes(2048)
    total = 3 * sum(sizes) // 16  # mnist-cnn's second conv at 1/16 with conv-boost x4
    plain = band_buckets(sizes, total, ExponentialShape(decay=2.0))
    cut = band_buckets(sizes, total, ExponentialShape(decay=2.0, min_rate=0.25))
    assert plain[4] > 0 and cut[3:] == [0] * 6  # band 4 had 100+ coefficients per bucket
    assert cut[:2] == sizes[:2]  # its share went to the lowest bands, now exact
    # min_rate 1 keeps the fewest bands that hold the budget, spread over them by the shape.
    trunc = band_buckets(sizes, total, ExponentialShape(decay=0.5, min_rate=1.0))
    assert 0 < trunc[2] < sizes[2] and trunc[3:] == [0] * 6 and sum(trunc) == total


def test_min_rate_is_kept_only_when_used():
    assert "min_rate" not in ExponentialShape(decay=2.0).model_dump()
    assert ExponentialShape(decay=2.0, min_rate=0.1).model_dump()["min_rate"] == 0.1
    with pytest.raises(ValueError):
        ExponentialShape(min_rate=1.5)
    with pytest.raises(ValueError):
        UniformShape(min_rate=0.1)  # all bands share one rate: nothing to cut off


def test_band_buckets_rejects_impossible_totals():
    with pytest.raises(ValueError):
        band_buckets([1, 2, 1], 0, UniformShape())
    with pytest.raises(ValueError):
        band_buckets([1, 2, 1], 5, UniformShape())


def test_layer_budgets_uniform_and_conv_boost():
    weights, is_conv = [800, 51200, 470400, 1500], [True, True, False, False]
    total = 7934
    uni = layer_budgets(weights, is_conv, total, UniformPolicy())
    assert sum(uni) == total
    assert all(1 <= k <= w for k, w in zip(uni, weights, strict=True))
    rates = np.array(uni) / np.array(weights)
    assert rates.max() / rates.min() < 1.1
    boost = layer_budgets(weights, is_conv, total, ConvBoostPolicy(conv_factor=4))
    assert sum(boost) == total
    assert boost[1] / weights[1] == pytest.approx(4 * boost[2] / weights[2], rel=0.01)
    huge = layer_budgets(weights, is_conv, 60000, ConvBoostPolicy(conv_factor=1000))
    assert huge[0] == 800 and huge[1] == 51200 and sum(huge) == 60000  # capped at 1


def test_head_factor_boosts_the_classifier():
    weights, is_conv = [800, 51200, 470400, 1500], [True, True, False, False]
    plain = layer_budgets(weights, is_conv, 7934, ConvBoostPolicy(conv_factor=8))
    head = layer_budgets(weights, is_conv, 7934, ConvBoostPolicy(conv_factor=8, head_factor=64))
    assert sum(head) == 7934 and head[3] > 40 * plain[3]
    assert head[3] / weights[3] == pytest.approx(64 * head[2] / weights[2], rel=0.01)
    assert head[1] / weights[1] == pytest.approx(8 * head[2] / weights[2], rel=0.01)
    capped = layer_budgets(weights, is_conv, 7934, ConvBoostPolicy(head_factor=1e6))
    assert capped[3] == 1500


def test_stem_factor_boosts_the_first_layer():
    weights, is_conv = [800, 51200, 102400, 640], [True, True, True, False]
    plain = layer_budgets(weights, is_conv, 1940, ConvBoostPolicy(conv_factor=1))
    stem = layer_budgets(weights, is_conv, 1940, ConvBoostPolicy(conv_factor=1, stem_factor=16))
    assert sum(stem) == 1940 and stem[0] > 12 * plain[0]
    assert stem[0] / weights[0] == pytest.approx(16 * stem[2] / weights[2], rel=0.02)
    assert stem[1] / weights[1] == pytest.approx(stem[2] / weights[2], rel=0.01)
    both = layer_budgets(
        weights, is_conv, 1940, ConvBoostPolicy(conv_factor=1, stem_factor=16, head_factor=16)
    )
    assert both[3] > 12 * plain[3]  # each boost against the plain conv rate
    assert both[0] / weights[0] == pytest.approx(16 * both[2] / weights[2], rel=0.02)
    assert layer_budgets(weights, is_conv, 1940, ConvBoostPolicy(stem_factor=1e6))[0] == 800


@pytest.mark.parametrize("name", ["head_factor", "stem_factor"])
def test_a_layer_factor_is_dumped_only_when_used_and_is_at_least_1(name: str) -> None:
    assert name not in ConvBoostPolicy(conv_factor=8).model_dump()  # old keys hold
    assert ConvBoostPolicy(**{name: 16}).model_dump()[name] == 16
    with pytest.raises(ValueError):
        ConvBoostPolicy(**{name: 0.5})


def test_stem_factor_reaches_the_model_and_keeps_its_size():
    policy = {"kind": "conv-boost", "conv_factor": 1, "stem_factor": 16}
    plain = build_model("mnist-allconv", "freshnets", 1 / 64, budget_policy="uniform")
    stem = build_model("mnist-allconv", "freshnets", 1 / 64, budget_policy=policy)
    assert sum(p.numel() for p in stem.parameters()) == sum(p.numel() for p in plain.parameters())
    assert stem.spec_module(0).num_buckets > 12 * plain.spec_module(0).num_buckets
    assert stem.spec_module(8).num_buckets < plain.spec_module(8).num_buckets


def test_layer_budgets_too_small():
    with pytest.raises(ValueError, match="compression"):
        layer_budgets([100, 100], [True, False], 1, UniformPolicy())
