import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from freshcore.dct import band_of, dct2
from freshcore.hashing import signed_bucket_index
from freshcore.layers import (
    FreshConv2d,
    FreshLinear,
    HashedConv2d,
    HashedLinear,
    LowFreqConv2d,
    LowRankConv2d,
    LowRankLinear,
    split_signed_index,
)

CONV_KW = {"stride": 2, "padding": 1, "dilation": 1, "groups": 2}


def _layers():
    return [
        FreshConv2d(4, 6, 3, band_buckets=[3, 4, 3, 2, 0], seed=1, **CONV_KW),
        HashedConv2d(4, 6, 3, buckets=10, seed=2, **CONV_KW),
        LowFreqConv2d(4, 6, 3, kept=20, **CONV_KW),
        LowRankConv2d(4, 6, 3, rank=2, **CONV_KW),
        FreshConv2d(3, 4, (2, 3), band_buckets=[2, 3, 3, 1], seed=3, dilation=2, padding=2),
        HashedLinear(12, 5, buckets=7, seed=4),
        LowRankLinear(12, 5, rank=3),
        FreshLinear((3, 2, 2), 5, band_buckets=[6, 5, 2], seed=5),
    ]


@pytest.mark.parametrize("layer", _layers(), ids=lambda m: type(m).__name__)
def test_gradcheck_float64(layer):
    layer = layer.double()
    if isinstance(layer, HashedLinear | LowRankLinear | FreshLinear):
        x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    else:
        x = torch.randn(2, layer.in_channels, 7, 7, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x,))

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in layer.parameters()))
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_fresh_conv_matches_manual_reconstruction():
    layer = FreshConv2d(3, 4, 5, band_buckets=[5, 6, 6, 5, 4, 3, 2, 1, 0], seed=9, padding=2)
    bucket, sign = split_signed_index(layer.index, layer.num_buckets)
    v = (layer.buckets.detach()[bucket] * sign).reshape(4, 3, 5, 5)
    # the rebuilt filter is the inverse DCT of the hashed coefficients
    torch.testing.assert_close(
        dct2(layer.rebuild_weight().detach().double()), v.double(), atol=1e-6, rtol=1e-5
    )
    x = torch.randn(2, 3, 9, 9)
    want = F.conv2d(x, layer.rebuild_weight(), layer.bias, padding=2)
    torch.testing.assert_close(layer(x), want)


def assert_bands_own_their_buckets(layer, band: np.ndarray, bands: list[int]) -> None:
    """Band b's coefficients use only (and here every one of) its own range of buckets; a band
    without buckets is zero."""
    bucket, sign = split_signed_index(layer.index, layer.num_buckets)
    offsets = np.concatenate(([0], np.cumsum(bands)))
    for b, k in enumerate(bands):
        members = torch.from_numpy(band == b)
        if k == 0:
            assert (sign[members] == 0).all()
        else:
            got = bucket[members]
            assert got.min() >= offsets[b] and got.max() < offsets[b + 1]
            assert len(got.unique()) == k
            assert (sign[members] != 0).all()


def test_fresh_conv_bands_own_their_bucket_ranges():
    bands = [4, 6, 5, 3, 2, 1, 1, 0, 0]
    layer = FreshConv2d(8, 16, 5, band_buckets=bands, seed=1)
    assert_bands_own_their_buckets(layer, np.tile(band_of(5, 5), 8 * 16), bands)


def test_lowfreq_keeps_lowest_bands_first():
    layer = LowFreqConv2d(2, 3, 3, kept=6 + 5)  # band 0 has 6 slices, band 1 has 12 entries
    _, sign = split_signed_index(layer.index, layer.num_buckets)
    band = np.tile(band_of(3, 3), 6)
    kept = sign.numpy() != 0
    assert kept.sum() == 11
    assert kept[band == 0].all()
    assert kept[band == 1].sum() == 5 and not kept[band >= 2].any()


def test_materialize_cache_is_used_and_dropped():
    layer = FreshConv2d(3, 4, 3, band_buckets=[2, 2, 2, 1, 1], seed=0).eval()
    x = torch.randn(1, 3, 6, 6)
    before = layer(x)
    layer.materialize()
    cached = layer._cache[0]
    assert layer.weight_for_forward() is cached
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    with torch.no_grad():
        layer.buckets.add_(1.0)  # an in-place change (an optimiser step) drops the cache
    assert layer.weight_for_forward() is not cached
    assert not torch.equal(layer(x), before)
    layer.materialize()
    layer.train()
    assert layer._cache is None


def test_hashed_linear_projection_is_least_squares():
    layer = HashedLinear(30, 20, buckets=25, seed=5)
    target = torch.randn(25)
    with torch.no_grad():
        layer.buckets.copy_(target)
    weight = layer.rebuild_weight().detach()
    layer.reset_parameters()
    layer.project(weight)  # a weight in the span is recovered exactly
    torch.testing.assert_close(layer.buckets.detach(), target)
    noisy = weight + 0.1 * torch.randn_like(weight)
    layer.project(noisy)
    best = ((layer.rebuild_weight() - noisy) ** 2).sum()
    with torch.no_grad():
        layer.buckets.add_(0.01 * torch.randn(25))
    assert ((layer.rebuild_weight() - noisy) ** 2).sum() > best


def test_low_rank_projection_is_svd():
    layer = LowRankConv2d(4, 6, 3, rank=6)
    w = torch.randn(6, 4, 3, 3)
    layer.project(w)
    torch.testing.assert_close(layer.rebuild_weight().detach(), w, atol=1e-5, rtol=1e-5)


def test_index_buffers_are_not_persistent():
    for layer in _layers():
        assert not any("index" in k or "idct" in k for k in layer.state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError):
        FreshConv2d(3, 4, 3, band_buckets=[1, 1, 1], seed=0)
    with pytest.raises(ValueError):
        LowFreqConv2d(3, 4, 3, kept=0)
    with pytest.raises(ValueError):
        LowRankLinear(4, 5, rank=9)


def test_materialize_inside_inference_mode_still_allows_input_gradients():
    layer = HashedLinear(6, 3, buckets=4, seed=0).eval()
    with torch.inference_mode():
        layer.materialize()
    x = torch.randn(2, 6, requires_grad=True)
    layer(x).sum().backward()  # e.g. a saliency map on a served model
    assert x.grad is not None and layer.buckets.grad is None
    layer.double()  # a dtype or device move drops the cache
    assert layer._cache is None


def test_balanced_fresh_conv_deals_each_band_evenly():
    """Every bucket of a band gets N_b / K_b members give or take one (hashing leaves about 1/e
    of them empty), a full band stores each coefficient alone, and the layer stays seeded."""
    bands = [16, 32, 20, 9, 3, 1, 0]  # 4x4 kernel, 16 slices: band sizes 16, 32, 48, 64, 48, 32, 16
    layer = FreshConv2d(4, 4, 4, band_buckets=bands, seed=7, balanced=True)
    bucket, sign = split_signed_index(layer.index, layer.num_buckets)
    band = np.tile(band_of(4, 4), 16)
    offsets = np.concatenate(([0], np.cumsum(bands)))
    for b, k in enumerate(bands):
        members = torch.from_numpy(band == b)
        if k == 0:
            assert (sign[members] == 0).all()
            continue
        counts = torch.bincount(bucket[members] - int(offsets[b]), minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1
    assert len(bucket[torch.from_numpy(band <= 1)].unique()) == 16 + 32  # bands 0, 1: exact
    again = FreshConv2d(4, 4, 4, band_buckets=bands, seed=7, balanced=True)
    assert torch.equal(again.index, layer.index)
    other = FreshConv2d(4, 4, 4, band_buckets=bands, seed=8, balanced=True)
    assert not torch.equal(other.index, layer.index)
    hashed = FreshConv2d(4, 4, 4, band_buckets=bands, seed=7)
    hashed_bucket, _ = split_signed_index(hashed.index, hashed.num_buckets)
    assert len(hashed_bucket[torch.from_numpy(band == 1)].unique()) < 32  # collisions
    assert "balanced=True" in repr(layer) and "balanced" not in repr(hashed)


def test_balanced_hashed_conv_deals_its_weights_evenly():
    """HashedNets' balanced form: every bucket gets N / K members give or take one, the signs
    stay hashed, and the plain layer (whose stored files must keep loading) is unchanged."""
    layer = HashedConv2d(8, 16, 3, buckets=100, seed=5, balanced=True)
    bucket, sign = split_signed_index(layer.index, layer.num_buckets)
    counts = torch.bincount(bucket, minlength=100)
    assert len(counts) == 100 and counts.max() - counts.min() <= 1  # 1152 weights: 11 or 12
    assert (sign != 0).all() and 0.4 < (sign > 0).float().mean() < 0.6
    again = HashedConv2d(8, 16, 3, buckets=100, seed=5, balanced=True)
    assert torch.equal(again.index, layer.index)
    plain = HashedConv2d(8, 16, 3, buckets=100, seed=5)
    expected = signed_bucket_index(5, 8 * 16 * 9, 100)
    assert torch.equal(plain.index, torch.from_numpy(expected))
    assert torch.bincount(split_signed_index(plain.index, 100)[0], minlength=100).min() < 11
    assert "balanced=True" in repr(layer) and "balanced" not in repr(plain)


def test_fresh_linear_holds_each_unit_and_channel_map_as_hashed_dct_coefficients():
    """Unit o's weights on channel c, as an H x W map, are the inverse DCT of coefficients hashed
    within their band; the layer reads the map flattened as nn.Flatten lays it out."""
    bands = [6, 8, 8, 5, 2, 0]  # 3x4 maps: band sizes 1, 2, 3, 3, 2, 1 per (unit, channel)
    layer = FreshLinear((5, 3, 4), 6, band_buckets=bands, seed=11)
    assert layer.weight_shape == (6, 60) and layer.num_buckets == sum(bands)
    assert layer.band_sizes() == [n * 30 for n in (1, 2, 3, 3, 2, 1)]
    assert_bands_own_their_buckets(layer, np.tile(band_of(3, 4), 30), bands)
    bucket, sign = split_signed_index(layer.index, layer.num_buckets)
    v = (layer.buckets.detach()[bucket] * sign).reshape(6, 5, 3, 4).double()
    weight = layer.rebuild_weight().detach().double()
    torch.testing.assert_close(dct2(weight.reshape(6, 5, 3, 4)), v, atol=1e-6, rtol=1e-5)
    maps = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(
        layer(maps.flatten(1)), F.linear(maps.flatten(1), layer.rebuild_weight(), layer.bias)
    )
    with pytest.raises(ValueError, match="need 6 band bucket counts"):
        FreshLinear((5, 3, 4), 6, band_buckets=[1, 2], seed=0)


def test_fresh_linear_projection_recovers_a_weight_in_its_span():
    layer = FreshLinear((4, 3, 3), 5, band_buckets=[20, 15, 10, 4, 1], seed=2, balanced=True)
    target = torch.randn(layer.num_buckets)
    with torch.no_grad():
        layer.buckets.copy_(target)
    weight = layer.rebuild_weight().detach()
    layer.reset_parameters()
    layer.project(weight)
    torch.testing.assert_close(layer.buckets.detach(), target, atol=1e-5, rtol=1e-5)


def test_sharing_tells_truncation_from_hashing():
    """Zeros are what a layer truncates, shared values what it hashes: a FreshNets layer with
    its kept bands whole and the next band dealt 18 coefficients to 10 buckets shares 16 of
    them (8 buckets of two), and `lowfreq` shares none."""
    fresh = FreshConv2d(2, 3, 3, band_buckets=[6, 12, 10, 0, 0], seed=1, balanced=True)
    assert fresh.sharing() == (12 + 6, 16)  # bands sized 6, 12, 18, 12, 6
    assert LowFreqConv2d(2, 3, 3, kept=11).sharing() == (54 - 11, 0)
    assert HashedConv2d(2, 3, 3, buckets=27, seed=2, balanced=True).sharing() == (0, 54)
    whole = FreshConv2d(2, 3, 3, band_buckets=[6, 12, 18, 12, 6], seed=1, balanced=True)
    assert whole.sharing() == (0, 0)
    hashed = HashedLinear(12, 5, buckets=7, seed=4)  # 60 weights in 7 buckets: all shared
    assert hashed.sharing() == (0, 60)
