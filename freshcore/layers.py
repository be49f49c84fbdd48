"""Layers whose weight is generated from a few stored parameters, then used by a plain conv/linear.

Each layer rebuilds its dense weight in ``rebuild_weight()`` (differentiable, so autograd carries
the gradient back to the stored parameters) and runs ``F.conv2d``/``F.linear``. ``materialize()``
caches the rebuilt weight for inference; the cache is keyed on the parameters' version counters, so
an optimiser step, ``load_state_dict`` or a move to another device drops it.

Hashed layers gather from the table ``[w, -w, 0]`` with one signed index per virtual weight: index
``h`` means ``+w[h]``, ``K + h`` means ``-w[h]`` and ``2K`` means a structural zero (a frequency
band without buckets, a coefficient that low-frequency truncation drops). The gather is an
``index_select`` whose backward is an ``index_add`` (measured much faster than advanced indexing).

A bucket is stored as the value of its members (no 1/sqrt(members) factor in the table): with that
factor an SGD step moves the virtual weights by the dense step projected onto the hashed subspace,
which is stable at any dense learning rate but, measured on digits, needs a ~16x larger learning
rate to train as fast and then hurts FreshNets' barely shared low bands (docs/training.md, why
clipping is on by default).
"""

from __future__ import annotations

import math
from typing import TypedDict, Unpack

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from freshcore.dct import band_of, idct2_matrix
from freshcore.hashing import bucket_and_sign, hash64, mix64, signed_bucket_index

_DEAL = 0x5BD1_E995  # salts the hash that orders a band's coefficients in a balanced FreshConv2d


def signed_index(bucket: np.ndarray, sign: np.ndarray, buckets: int) -> Tensor:
    """The gather index into ``[w, -w, 0]`` from bucket ids and signs (+1, -1, or 0 for zero)."""
    idx = np.where(sign > 0, bucket, np.where(sign < 0, bucket + buckets, 2 * buckets))
    return torch.from_numpy(idx.astype(np.int64))


def split_signed_index(index: Tensor, buckets: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`signed_index`: (bucket ids, signs as +-1 or 0)."""
    sign = torch.where(index < buckets, 1, torch.where(index < 2 * buckets, -1, 0))
    bucket = torch.where(sign > 0, index, torch.where(sign < 0, index - buckets, 0))
    return bucket, sign


def gather_table(buckets: Tensor, index: Tensor) -> Tensor:
    """The flat virtual values: ``[w, -w, 0]`` gathered by ``index``."""
    return torch.cat((buckets, -buckets, buckets.new_zeros(1))).index_select(0, index)


@torch.no_grad()
def init_buckets_(buckets: Tensor, index: Tensor, fan_in: int) -> None:
    """Virtual values ~ U(+-bound) with the variance of PyTorch's default dense init.

    Each non-zero virtual value has variance bound^2 / 3 (an orthonormal DCT keeps the mean), so
    structural zeros (a band without buckets, truncated frequencies) are made up for by a larger
    bound; without this ``lowfreq`` at 1/16 began with a sixteenth of the dense variance.
    """
    nonzero = int((index < 2 * buckets.numel()).sum())
    bound = math.sqrt(index.numel() / max(1, nonzero) / fan_in)
    nn.init.uniform_(buckets, -bound, bound)


@torch.no_grad()
def project_buckets_(buckets: Tensor, index: Tensor, values: Tensor) -> None:
    """Least-squares buckets for flat virtual ``values``: mean of sign x value per bucket."""
    k = buckets.numel()
    bucket, sign = split_signed_index(index.cpu(), k)
    used = sign != 0
    v = values.detach().reshape(-1).double().cpu()
    sums = torch.bincount(bucket[used], weights=sign[used] * v[used], minlength=k)
    counts = torch.bincount(bucket[used], minlength=k).clamp_min(1)
    buckets.copy_((sums / counts).to(buckets))


class _Generated(nn.Module):
    """What every generated layer shares: the rebuilt weight's shape, bias init and its cache.

    A subclass sets ``weight_shape`` (out, fan-in dims...) and ``bias`` before anything else, and
    defines ``rebuild_weight``; ``materialize`` caches the rebuilt weight for eval forwards.
    """

    weight_shape: tuple[int, ...]
    bias: nn.Parameter | None

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[Tensor, tuple[tuple[int, int], ...]] | None = None

    @property
    def virtual_weights(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight_shape[1:])

    def _reset_bias(self) -> None:
        if self.bias is not None:
            bound = 1 / math.sqrt(self.fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def rebuild_weight(self) -> Tensor:
        raise NotImplementedError

    def stored_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters(recurse=False))

    def _versions(self) -> tuple[tuple[int, int], ...]:
        return tuple((p._version, p.data_ptr()) for p in self.parameters(recurse=False))

    def weight_for_forward(self) -> Tensor:
        if self._cache is not None and not self.training:
            weight, versions = self._cache
            if versions == self._versions():
                return weight
            self._cache = None
        return self.rebuild_weight()

    def materialize(self) -> None:
        """Rebuild the weight once and use it for every eval forward until a parameter changes."""
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, even when called
            self._cache = (self.rebuild_weight().contiguous(), self._versions())  # in inference

    def clear_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True) -> _Generated:
        if mode:
            self._cache = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def, override]
        self._cache = None
        return super()._apply(fn, recurse)


class _BucketTable(_Generated):
    """A weight gathered from the stored ``buckets`` through ``[w, -w, 0]`` by a signed ``index``.

    Shared by the hashed, FreshNets and low-frequency layers, conv or fc. The gathered values are
    the weight itself, or (``_register_dct`` with a slice shape) the 2-D DCT coefficients of each
    consecutive kh x kw slice of it: a conv filter's, or an fc unit's weights on one input map.
    """

    buckets: nn.Parameter
    index: Tensor
    idct: Tensor | None

    def _register_dct(self, slice_shape: tuple[int, int] | None) -> None:
        """Hold the weight as DCT coefficients of ``slice_shape`` slices (None: as itself)."""
        matrix = None if slice_shape is None else idct2_matrix(*slice_shape, torch.float32)
        self.register_buffer("idct", matrix, persistent=False)

    def _init_table(self, buckets: int, index: Tensor) -> None:
        """Store ``buckets`` values gathered by ``index`` and initialise them (and the bias)."""
        self.buckets = nn.Parameter(torch.empty(int(buckets)))
        self.register_buffer("index", index, persistent=False)
        self.reset_parameters()

    @property
    def num_buckets(self) -> int:
        return self.buckets.numel()

    def sharing(self) -> tuple[int, int]:
        """(gathered values fixed at zero, values that share their stored value with another).

        Why: two models can store the same count and differ in kind. Zeros are truncation (a cut
        band, `LowFreqConv2d`'s high frequencies), shared values are hashing; a FreshNets layer
        whose kept bands are all stored whole is low-frequency truncation by another name."""
        bucket, sign = split_signed_index(self.index, self.num_buckets)
        used = sign != 0
        members = torch.bincount(bucket[used], minlength=self.num_buckets)
        return int((~used).sum()), int(members[members > 1].sum())

    def rebuild_weight(self) -> Tensor:
        v = gather_table(self.buckets, self.index)
        if self.idct is not None:
            v = v.view(-1, self.idct.shape[0]) @ self.idct
        return v.view(self.weight_shape)

    def coefficients_of(self, weight: Tensor) -> Tensor:
        """The virtual values or coefficients (flat, in ``index`` order) of a dense weight."""
        v = weight.detach().double()
        if self.idct is not None:  # the DCT: the transpose of the orthonormal inverse
            v = v.reshape(-1, self.idct.shape[0]) @ self.idct.double().T
        return v.reshape(-1)

    def project(self, weight: Tensor) -> None:
        """Least-squares bucket values for a dense weight: mean of sign x value per bucket.

        ``weight`` may live on another device (a dense model on CUDA): it is brought to this
        layer's, where the DCT matrix is, before the coefficients are taken.
        """
        weight = weight.detach().to(self.index.device)
        project_buckets_(self.buckets, self.index, self.coefficients_of(weight))

    def reset_parameters(self) -> None:
        init_buckets_(self.buckets, self.index, self.fan_in)
        self._reset_bias()


class _LowRank(_Generated):
    """A weight whose (out, fan_in) matrix is the product u @ v of rank ``rank``."""

    def _init_factors(self, rank: int) -> None:
        """Store u (out, rank) and v (rank, fan_in) and initialise them (and the bias)."""
        out, fan_in = self.weight_shape[0], self.fan_in
        if not 1 <= rank <= min(out, fan_in):
            raise ValueError(f"rank must be in [1, {min(out, fan_in)}], got {rank}")
        self.rank = int(rank)
        self.u = nn.Parameter(torch.empty(out, rank))
        self.v = nn.Parameter(torch.empty(rank, fan_in))
        self.reset_parameters()

    def rebuild_weight(self) -> Tensor:
        return (self.u @ self.v).view(self.weight_shape)

    def reset_parameters(self) -> None:
        # var(u @ v) = rank * var(u) * var(v) = 1 / (3 fan_in), the default dense init's variance
        bound = (3.0 / (self.rank * self.fan_in)) ** 0.25
        nn.init.uniform_(self.u, -bound, bound)
        nn.init.uniform_(self.v, -bound, bound)
        self._reset_bias()

    @torch.no_grad()
    def project(self, weight: Tensor) -> None:
        """The best rank-r approximation (truncated SVD) of a dense weight."""
        matrix = weight.detach().reshape(self.weight_shape[0], -1).double().cpu()
        uu, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        root = s[: self.rank].sqrt()
        self.u.copy_((uu[:, : self.rank] * root).to(self.u))
        self.v.copy_((root[:, None] * vh[: self.rank]).to(self.v))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}"


class ConvOptions(TypedDict, total=False):
    """The options of a conv besides its channels and kernel, as ``nn.Conv2d`` takes them."""

    stride: int | tuple[int, int]
    padding: int | tuple[int, int]
    dilation: int | tuple[int, int]
    groups: int
    bias: bool


class _GeneratedConv2d(_Generated):
    """A conv2d whose (out, in/groups, kh, kw) weight comes from ``rebuild_weight``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x, self.weight_for_forward(), self.bias, self.stride, self.padding, self.dilation,
            self.groups,
        )  # fmt: skip

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}"


class _TableConv2d(_BucketTable, _GeneratedConv2d):
    """Conv whose coefficients gather from ``[w, -w, 0]``; optionally in the DCT domain."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        dct: bool,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        self._register_dct(self.kernel_size if dct else None)


def fresh_index(
    band: np.ndarray, band_buckets: list[int], seed: int, balanced: bool = False
) -> Tensor:
    """FreshNets' signed gather index: coefficient i of band ``band[i]`` is hashed (bucket and
    sign) among that band's ``band_buckets[band[i]]`` buckets; a band without buckets is zero.

    ``balanced``: a hashed permutation of each band deals its coefficients out to the band's
    buckets in turn, so every bucket has N_b / K_b members, give or take one (`FreshConv2d`).
    """
    k_b = np.asarray(band_buckets, dtype=np.int64)
    offset = np.concatenate(([0], np.cumsum(k_b)[:-1]))
    n = k_b[band]
    local, sign = bucket_and_sign(seed, band.size, np.maximum(n, 1))
    if balanced:  # deal each band's coefficients, in hashed order, to its buckets in turn
        order = np.lexsort((hash64(mix64(seed ^ _DEAL), np.arange(band.size)), band))
        start = np.searchsorted(band[order], np.arange(len(k_b)))
        rank = np.arange(band.size) - start[band[order]]
        local[order] = rank % np.maximum(n[order], 1)
    sign[n == 0] = 0
    return signed_index(local + offset[band], sign, int(k_b.sum()))


def slice_band_sizes(kh: int, kw: int, slices: int) -> list[int]:
    """Coefficients per band b = j1 + j2 of ``slices`` kh x kw DCT slices."""
    return [int(n) * slices for n in np.bincount(band_of(kh, kw))]


class _FreshBands(_BucketTable):
    """FreshNets' table, shared by its conv and fc layers: the DCT coefficients of each kh x kw
    slice of the weight, hashed per band b = j1 + j2 into ``band_buckets[b]`` buckets."""

    band_buckets: list[int]
    seed: int
    balanced: bool
    slice_shape: tuple[int, int]

    def _init_bands(
        self, slice_shape: tuple[int, int], band_buckets: list[int], seed: int, balanced: bool
    ) -> None:
        """Check the band counts, make the index and initialise the table (the DCT is set)."""
        kh, kw = self.slice_shape = slice_shape
        if len(band_buckets) != kh + kw - 1:
            raise ValueError(f"need {kh + kw - 1} band bucket counts, got {len(band_buckets)}")
        if sum(band_buckets) < 1 or min(band_buckets) < 0:
            raise ValueError("band bucket counts must be non-negative with a positive total")
        self.band_buckets = [int(k) for k in band_buckets]
        self.seed = int(seed)
        self.balanced = bool(balanced)
        band = np.tile(band_of(kh, kw), self.virtual_weights // (kh * kw))
        index = fresh_index(band, self.band_buckets, self.seed, self.balanced)
        self._init_table(sum(self.band_buckets), index)

    def band_sizes(self) -> list[int]:
        kh, kw = self.slice_shape
        return slice_band_sizes(kh, kw, self.virtual_weights // (kh * kw))

    def _bands_repr(self) -> str:
        balanced = ", balanced=True" if self.balanced else ""
        return f", buckets={self.num_buckets}, bands={self.band_buckets}" + balanced


class FreshConv2d(_FreshBands, _TableConv2d):
    """FreshNets conv: DCT coefficients hashed per frequency band into sum(band_buckets) buckets.

    ``band_buckets[b]`` buckets serve band b = j1 + j2 (0 buckets: that band is zero). A coefficient
    of slice s at position p has flat index s * kh * kw + p; its bucket is hashed within its band.
    ``balanced``: instead of hashing each coefficient independently (some buckets then get many
    members and about 1/e of them none), a hashed permutation of each band deals its coefficients
    out to the band's buckets in turn, so every bucket has N_b / K_b members, give or take one, and
    a band with as many buckets as coefficients stores each one exactly, as `LowFreqConv2d` does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        band_buckets: list[int],
        seed: int,
        balanced: bool = False,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dct=True, **options)
        self._init_bands(self.kernel_size, band_buckets, seed, balanced)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._bands_repr()


class HashedConv2d(_TableConv2d):
    """HashedNets applied to conv filters in the spatial domain (a baseline).

    ``balanced``: the weights are dealt to the buckets in a hashed order, as `FreshConv2d` deals
    one band, so every bucket has N / K members give or take one: the same option FreshNets has,
    so that a comparison between them is about the frequency domain, not the bucket loads.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        buckets: int,
        seed: int,
        balanced: bool = False,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dct=False, **options)
        self.seed = int(seed)
        self.balanced = bool(balanced)
        n = self.virtual_weights
        if self.balanced:  # one band holding every weight
            index = fresh_index(np.zeros(n, np.int64), [int(buckets)], self.seed, balanced=True)
        else:
            index = torch.from_numpy(signed_bucket_index(self.seed, n, int(buckets)))
        self._init_table(buckets, index)

    def extra_repr(self) -> str:
        balanced = ", balanced=True" if self.balanced else ""
        return super().extra_repr() + f", buckets={self.num_buckets}" + balanced


class LowFreqConv2d(_TableConv2d):
    """Keeps only the ``kept`` lowest-frequency DCT coefficients (band, then slice); no hashing."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        kept: int,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dct=True, **options)
        kh, kw = self.kernel_size
        n = self.virtual_weights
        if not 1 <= kept <= n:
            raise ValueError(f"kept must be in [1, {n}], got {kept}")
        band = np.tile(band_of(kh, kw), n // (kh * kw))
        order = np.argsort(band, kind="stable")[:kept]  # band, then slice, then position
        bucket = np.zeros(n, dtype=np.int64)
        sign = np.zeros(n, dtype=np.int8)
        bucket[order] = np.arange(kept)
        sign[order] = 1
        self._init_table(kept, signed_index(bucket, sign, int(kept)))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kept={self.num_buckets}"


class LowRankConv2d(_LowRank, _GeneratedConv2d):
    """Conv whose filter matrix (out, in/groups * kh * kw) is the product u @ v of rank ``rank``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        self._init_factors(rank)


class _GeneratedLinear(_Generated):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_shape = (out_features, in_features)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_for_forward(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class HashedLinear(_BucketTable, _GeneratedLinear):
    """HashedNets fully connected layer: V[i, j] = xi(i, j) * w[h(i, j)] with ``buckets`` values."""

    def __init__(
        self, in_features: int, out_features: int, buckets: int, seed: int, bias: bool = True
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.seed = int(seed)
        self._register_dct(None)
        index = signed_bucket_index(self.seed, self.virtual_weights, int(buckets))
        self._init_table(buckets, torch.from_numpy(index))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", buckets={self.num_buckets}"


class FreshLinear(_FreshBands, _GeneratedLinear):
    """An fc layer that reads a flattened (C, H, W) feature map, hashed the FreshNets way.

    The weights of one output unit on one input channel form an H x W map; each map is held as
    its 2-D DCT coefficients, hashed per band b = j1 + j2 into ``band_buckets[b]`` buckets, as
    `FreshConv2d` does with a filter slice. Why: the fc layer after the convs holds most of a
    small CNN's weights, and what training adds to it is smooth over the map (measured on
    mnist-bg-img, docs/results/history.md: the energy per coefficient of the
    trained-minus-initial fc1 falls about 7 times from band 0 to band 12), which HashedNets'
    uniform hashing ignores. Measured in session 12 on mnist-bg-img 1/64: no gain over
    HashedNets (docs/results/history.md), so `build_model` keeps HashedNets fc layers unless
    ``fc_allocation`` is given.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_features: int,
        band_buckets: list[int],
        seed: int,
        balanced: bool = False,
        bias: bool = True,
    ) -> None:
        c, h, w = (int(d) for d in in_shape)
        super().__init__(c * h * w, out_features, bias)
        self.in_shape = (c, h, w)
        self._register_dct((h, w))
        self._init_bands((h, w), band_buckets, seed, balanced)

    def extra_repr(self) -> str:
        return (
            f"in_shape={self.in_shape}, out_features={self.out_features}, "
            f"bias={self.bias is not None}" + self._bands_repr()
        )


class LowRankLinear(_LowRank, _GeneratedLinear):
    """Fully connected layer with weight u @ v of rank ``rank``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self._init_factors(rank)


class Normalize(nn.Module):
    """(x - mean) / std per channel: the in-model input normalisation, exportable to ONNX."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("std", std.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
