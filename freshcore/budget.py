"""How many stored parameters each layer, and each frequency band of a filter bank, receives.

Two decisions live here:
- the *allocation* inside a FreshNets conv layer: bucket counts per band b = j1 + j2 whose rates
  K_b / N_b are non-increasing in b and capped at 1 (the excess of a capped band is handed on to the
  others: water-filling), shaped by a family (uniform, exponential decay, beta survival), and
  optionally cut off: bands whose rate would fall below ``min_rate`` get no buckets at all;
- the *budget policy* across layers: the same factor everywhere, or a larger share for conv filters.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from scipy.special import betainc


class UniformShape(BaseModel):
    """Every band gets the same rate (FreshNets without frequency sensitivity)."""

    model_config = ConfigDict(extra="forbid")
    shape: Literal["uniform"] = "uniform"


class _CutOff(BaseModel):
    """``min_rate``: a band whose rate would fall below it gets no buckets, its share going to the
    lower bands (water-filled again), except where those cannot hold the budget.

    Why: a band hashed at a very low rate (say 100 coefficients per bucket) adds little signal and
    a lot of collision noise; dropping it keeps the lower bands exact for longer. With a cut-off the
    family reaches from "hash every band" (0) to low-frequency truncation (a steep decay and 1),
    and validation picks the point between.
    0 (the default) is left out of the dumped dict, so allocations without it read as before.
    """

    model_config = ConfigDict(extra="forbid")
    min_rate: float = Field(0.0, ge=0.0, le=1.0)

    @model_serializer(mode="wrap")
    def _omit_no_cut_off(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data = handler(self)
        data.pop("min_rate", None)
        if self.min_rate != 0:
            data["min_rate"] = self.min_rate  # last: {"shape", its parameters, "min_rate"}
        return data


class ExponentialShape(_CutOff):
    """Rate of band b proportional to exp(-decay * b)."""

    shape: Literal["exponential"] = "exponential"
    decay: float = Field(0.5, ge=0.0, le=20.0)


class BetaShape(_CutOff):
    """Rate of band b proportional to the beta survival function 1 - I_t(a, b), t = (b + 1/2) / B.

    The survival function is non-increasing for every (a, b), so the rates always are; a < b front-
    loads the budget on low frequencies, a = b = 1 is a linear decay.
    """

    shape: Literal["beta"] = "beta"
    a: float = Field(1.0, gt=0.0, le=100.0)
    b: float = Field(2.0, gt=0.0, le=100.0)


Allocation = Annotated[UniformShape | ExponentialShape | BetaShape, Field(discriminator="shape")]
DEFAULT_ALLOCATION = ExponentialShape(decay=0.5)


class UniformPolicy(BaseModel):
    """Every compressed layer stores the same fraction of its weights."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["uniform"] = "uniform"


class ConvBoostPolicy(BaseModel):
    """Conv filters get ``conv_factor`` times the fc rate (capped at 1); the model total is kept.

    ``head_factor``: the last layer (the classifier) gets that many times the fc rate, capped at
    1. Why: it is tiny (mnist-cnn's: 1,500 weights of 524,000) but every class score goes through
    it; at 1/64 the fc rate leaves it 14 values for 10 classes, where `equivalent` keeps its
    classifier dense.

    ``stem_factor``: the first layer gets that many times the rate of its kind, capped at 1.
    Why: it is as tiny (`mnist-allconv`'s: 800 weights of 155,000) and every feature is built
    from it; at 1/64 the same rate leaves its 32 filters 10 shared values, where `equivalent`
    keeps 3 filters whole.

    A factor of 1 (the default) is left out of the dumped dict, so policies without it read as
    before.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["conv-boost"] = "conv-boost"
    conv_factor: float = Field(4.0, ge=1.0, le=1e6)
    head_factor: float = Field(1.0, ge=1.0, le=1e6)
    stem_factor: float = Field(1.0, ge=1.0, le=1e6)

    @model_serializer(mode="wrap")
    def _omit_unit_factors(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data = handler(self)
        for name in ("head_factor", "stem_factor"):
            if getattr(self, name) == 1:
                data.pop(name, None)
        return data


BudgetPolicy = Annotated[UniformPolicy | ConvBoostPolicy, Field(discriminator="kind")]
DEFAULT_POLICY = UniformPolicy()


def shape_weights(
    allocation: UniformShape | ExponentialShape | BetaShape, bands: int
) -> np.ndarray:
    """Non-increasing, positive relative rates of ``bands`` bands."""
    b = np.arange(bands, dtype=np.float64)
    if isinstance(allocation, UniformShape):
        w = np.ones(bands)
    elif isinstance(allocation, ExponentialShape):
        w = np.exp(-allocation.decay * b)
    else:
        w = 1.0 - betainc(allocation.a, allocation.b, (b + 0.5) / bands)
    w = np.maximum(w, 1e-12)
    return np.minimum.accumulate(w)  # guard against float noise: exactly non-increasing


def water_fill(sizes: np.ndarray, weights: np.ndarray, total: float) -> np.ndarray:
    """Real rates r_i = min(1, c * w_i) with sum r_i * N_i = total (capped excess handed on)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if total >= sizes.sum():
        return np.ones_like(sizes)
    capped = np.zeros(len(sizes), dtype=bool)
    while True:
        free = ~capped
        c = (total - sizes[capped].sum()) / (weights[free] * sizes[free]).sum()
        over = free & (c * weights > 1.0)
        if not over.any():
            rates = np.where(capped, 1.0, c * weights)
            return np.minimum(rates, 1.0)
        capped |= over


def cut_off_rates(
    sizes: np.ndarray, weights: np.ndarray, total: float, min_rate: float
) -> np.ndarray:
    """`water_fill` over the lowest bands only: the highest bands whose rate would be under
    ``min_rate`` are dropped (rate 0) until every kept band reaches it, or until dropping one more
    would leave the kept bands too small to hold ``total``."""
    sizes = np.asarray(sizes, dtype=np.float64)
    # The fewest leading bands that can hold the total: never drop below this.
    floor = int(np.searchsorted(np.cumsum(sizes), total - 1e-9)) + 1
    keep = len(sizes)
    while True:
        rates = water_fill(sizes[:keep], weights[:keep], total)
        below = int((rates < min_rate).sum())  # a suffix: the rates are non-increasing
        if below == 0 or keep <= floor:
            return np.concatenate((rates, np.zeros(len(sizes) - keep)))
        keep = max(floor, keep - below)


def band_buckets(
    band_sizes: np.ndarray,
    total: int,
    allocation: UniformShape | ExponentialShape | BetaShape,
) -> list[int]:
    """Integer bucket counts K_b summing to ``total`` with K_b / N_b non-increasing and <= 1."""
    n = np.asarray(band_sizes, dtype=np.int64)
    if not 1 <= total <= n.sum():
        raise ValueError(f"bucket total {total} outside [1, {int(n.sum())}]")
    min_rate = getattr(allocation, "min_rate", 0.0)
    target = cut_off_rates(n, shape_weights(allocation, len(n)), total, min_rate) * n
    k = np.minimum(np.floor(target + 0.5).astype(np.int64), n)
    for b in range(1, len(n)):  # repair monotonicity: K_b / N_b <= K_{b-1} / N_{b-1}
        k[b] = min(k[b], (k[b - 1] * n[b]) // n[b - 1])
    while k.sum() != total:
        short = k.sum() < total
        best, best_gap = -1, -math.inf
        for b in range(len(n)):
            if short:
                ok = target[b] > 0 and k[b] < n[b]  # a cut-off band stays empty
                ok = ok and (b == 0 or (k[b] + 1) * n[b - 1] <= k[b - 1] * n[b])
                gap = target[b] - k[b]
            else:
                ok = k[b] > 0 and (b == len(n) - 1 or (k[b] - 1) * n[b + 1] >= k[b + 1] * n[b])
                gap = k[b] - target[b]
            if ok and gap > best_gap:
                best, best_gap = b, gap
        k[best] += 1 if short else -1
    return [int(x) for x in k]


def layer_budgets(
    weights: list[int], is_conv: list[bool], total: int, policy: UniformPolicy | ConvBoostPolicy
) -> list[int]:
    """Stored weights per compressed layer, summing exactly to ``total`` (each in [1, weights]);
    the first of ``weights`` is the network's first layer (``stem_factor``), the last its last
    (``head_factor``)."""
    n = np.asarray(weights, dtype=np.int64)
    if total < len(n):
        raise ValueError(
            f"the budget leaves {total} stored weights for {len(n)} compressed layers: "
            "use a larger compression factor"
        )
    total = min(total, int(n.sum()))
    if isinstance(policy, ConvBoostPolicy):
        w = np.where(np.asarray(is_conv), policy.conv_factor, 1.0)
        w[-1] *= policy.head_factor
        w[0] *= policy.stem_factor
    else:
        w = np.ones(len(n))
    target = water_fill(n, w, total) * n
    k = np.clip(np.floor(target).astype(np.int64), 1, n)
    order = np.argsort(-(target - k), kind="stable")
    i = 0
    while k.sum() < total:  # largest remainder first
        j = order[i % len(n)]
        if k[j] < n[j]:
            k[j] += 1
        i += 1
    while k.sum() > total:  # only when the floor of 1 pushed us over: take from the largest
        j = int(np.argmax(k))
        k[j] -= 1
    return [int(x) for x in k]
