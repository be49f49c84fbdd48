"""Honest sizes: what each layer would store dense, and what the compressed model really stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from freshcore.build import FreshModel
from freshcore.layers import _BucketTable


@dataclass
class LayerSize:
    index: int  # index in spec.layers
    type: str  # spec layer type (conv, fc, batchnorm)
    kind: str  # stored form: conv, fc, fresh-conv, hashed-fc, lowrank-conv, ...
    virtual_weights: int  # dense parameters of the spec's layer (weights + biases)
    rebuilt_weights: int  # dense parameters of the layer the model computes (narrower: `width`)
    stored_parameters: int
    compact_bytes: int
    dense_bytes: int
    ratio: float  # stored / virtual
    zero_values: int = 0  # rebuilt values fixed at zero: truncation (a cut band, lowfreq)
    shared_values: int = 0  # rebuilt values that share their stored value: hashing


@dataclass
class SizeReport:
    method: str
    compression: float
    layers: list[LayerSize] = field(default_factory=list)
    virtual_weights: int = 0
    stored_parameters: int = 0
    compact_bytes: int = 0
    dense_bytes: int = 0
    ratio: float = 0.0
    rebuilt_weights: int = 0
    rebuilt_ratio: float = 0.0  # stored / rebuilt: near 1, the rebuilt network is barely hashed
    zero_values: int = 0
    shared_values: int = 0
    shared_ratio: float = 0.0  # shared / rebuilt values not fixed at zero: how hashed it is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_report(model: FreshModel, half: bool = False) -> SizeReport:
    """Per spec layer with parameters and in total; bytes at 4 per value (2 with ``half``).

    ``ratio`` is the compression of the spec's network, the factor a user asks for;
    ``rebuilt_ratio`` that of the network the model computes, which a narrower virtual network
    (`width`, `equivalent`) makes larger: at width 1/4 and 1/16, mnist-allconv keeps 96% of it.
    ``zero_values`` and ``shared_values`` say how the rest is dropped: truncated (fixed at zero)
    or hashed (several values per stored one); ``shared_ratio`` is the hashed share of the values
    not fixed at zero."""
    width = 2 if half else 4
    shapes = model.spec.check()
    rebuilt = {s.index: s.weights + s.biases for s in model.built_spec().check()}
    report = SizeReport(model.method, model.compression)
    for s in shapes:
        virtual = s.weights + s.biases
        if not virtual:
            continue
        mod = model.spec_module(s.index)
        stored = sum(p.numel() for p in mod.parameters())
        plan = model.plan[s.index] or {}
        zero, shared = mod.sharing() if isinstance(mod, _BucketTable) else (0, 0)
        report.layers.append(
            LayerSize(
                index=s.index,
                type=s.type,
                kind=plan.get("kind", s.type),
                virtual_weights=virtual,
                rebuilt_weights=rebuilt[s.index],
                stored_parameters=stored,
                compact_bytes=stored * width,
                dense_bytes=virtual * 4,
                ratio=stored / virtual,
                zero_values=zero,
                shared_values=shared,
            )
        )
    report.virtual_weights = sum(x.virtual_weights for x in report.layers)
    report.stored_parameters = sum(x.stored_parameters for x in report.layers)
    report.compact_bytes = sum(x.compact_bytes for x in report.layers)
    report.dense_bytes = sum(x.dense_bytes for x in report.layers)
    report.ratio = report.stored_parameters / max(1, report.virtual_weights)
    report.rebuilt_weights = sum(x.rebuilt_weights for x in report.layers)
    report.rebuilt_ratio = report.stored_parameters / max(1, report.rebuilt_weights)
    report.zero_values = sum(x.zero_values for x in report.layers)
    report.shared_values = sum(x.shared_values for x in report.layers)
    nonzero = report.rebuilt_weights - report.zero_values
    report.shared_ratio = report.shared_values / max(1, nonzero)
    return report
