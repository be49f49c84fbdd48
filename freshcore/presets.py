"""Named architectures and the adaptation of a preset (or a spec) to a data set's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freshcore.spec import ArchitectureSpec, FcLayer, SpecError, parse_spec


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    spec: ArchitectureSpec


def _conv(out: int, k: int = 5, pad: int = 2) -> dict[str, Any]:
    return {"type": "conv", "out_channels": out, "kernel_size": k, "padding": pad}


_RELU = {"type": "relu"}
_POOL = {"type": "pool", "kind": "max", "kernel_size": 2}
_BN = {"type": "batchnorm"}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "mnist-cnn",
            "Two 5x5 conv layers (32, 64 channels) with max pooling, fc-150, dropout, fc-10; "
            "28x28 grey input, about half a million weights.",
            ArchitectureSpec.model_validate(
                {
                    "name": "mnist-cnn",
                    "input_shape": (1, 28, 28),
                    "num_classes": 10,
                    "layers": [
                        _conv(32), _RELU, _POOL,
                        _conv(64), _RELU, _POOL,
                        {"type": "fc", "out_features": 150}, _RELU, {"type": "dropout", "p": 0.5},
                        {"type": "fc", "out_features": 10},
                    ],
                }
            ),
        ),
        Preset(
            "mnist-allconv",
            "Three 5x5 conv layers (32, 64, 64 channels) with batch norm, max pooling twice, a "
            "global average pool, fc-10; 28x28 grey input, about 155 thousand weights, over 99% of "
            "them conv filters, where the conv compression decides the size.",
            ArchitectureSpec.model_validate(
                {
                    "name": "mnist-allconv",
                    "input_shape": (1, 28, 28),
                    "num_classes": 10,
                    "layers": [
                        _conv(32), _BN, _RELU, _POOL,
                        _conv(64), _BN, _RELU, _POOL,
                        _conv(64), _BN, _RELU,
                        {"type": "pool", "kind": "avg", "kernel_size": 7},
                        {"type": "fc", "out_features": 10},
                    ],
                }
            ),
        ),
        Preset(
            "cifar-cnn",
            "Three 5x5 conv layers (32, 64, 64 channels) with max pooling, fc-256, dropout, fc-10; "
            "32x32 colour input, about 420 thousand weights.",
            ArchitectureSpec.model_validate(
                {
                    "name": "cifar-cnn",
                    "input_shape": (3, 32, 32),
                    "num_classes": 10,
                    "layers": [
                        _conv(32), _RELU, _POOL,
                        _conv(64), _RELU, _POOL,
                        _conv(64), _RELU, _POOL,
                        {"type": "fc", "out_features": 256}, _RELU, {"type": "dropout", "p": 0.5},
                        {"type": "fc", "out_features": 10},
                    ],
                }
            ),
        ),
    )
}  # fmt: skip


def list_presets() -> list[dict[str, Any]]:
    """Name, description, input shape, classes and dense parameter count of each preset."""
    return [
        {
            "name": p.name,
            "description": p.description,
            "input_shape": list(p.spec.input_shape),
            "num_classes": p.spec.num_classes,
            "virtual_weights": p.spec.virtual_weights(),
        }
        for p in PRESETS.values()
    ]


def resolve_spec(
    spec_or_name: str | ArchitectureSpec | dict[str, Any],
    input_shape: tuple[int, int, int] | list[int] | None = None,
    num_classes: int | None = None,
) -> ArchitectureSpec:
    """A checked spec from a preset name or a spec, adapted to ``input_shape``/``num_classes``.

    The first conv's input channels and the first fc's input features follow from the shape walk;
    adapting changes the input shape and the last fc's ``out_features``.
    """
    if isinstance(spec_or_name, str):
        if spec_or_name not in PRESETS:
            raise SpecError(
                None, f"unknown preset {spec_or_name!r}; known: {', '.join(sorted(PRESETS))}"
            )
        spec = PRESETS[spec_or_name].spec
    else:
        spec = parse_spec(spec_or_name)
    update: dict[str, Any] = {}
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise SpecError(None, f"input_shape must be three positive ints (C, H, W), got {shape}")
        update["input_shape"] = shape
    if num_classes is not None and num_classes != spec.num_classes:
        if num_classes < 2:
            raise SpecError(None, f"num_classes must be at least 2, got {num_classes}")
        last = spec.layers[-1]
        if not isinstance(last, FcLayer):
            raise SpecError(len(spec.layers) - 1, "the last layer must be fc", last.type)
        layers = [*spec.layers[:-1], last.model_copy(update={"out_features": num_classes})]
        update |= {"num_classes": num_classes, "layers": layers}
    if update:
        spec = spec.model_copy(update=update)
    spec.check()
    return spec
