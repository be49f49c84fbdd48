"""Architecture specs: a pydantic description of a plain CNN that any method can compress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Pair = int | tuple[int, int]


class SpecError(ValueError):
    """An invalid architecture: ``layer`` is the index in ``layers`` (None: the whole spec)."""

    def __init__(self, layer: int | None, reason: str, layer_type: str | None = None) -> None:
        self.layer = layer
        self.layer_type = layer_type
        self.reason = reason
        where = (
            "spec"
            if layer is None
            else f"layer {layer}" + (f" ({layer_type})" if layer_type else "")
        )
        super().__init__(f"{where}: {reason}")


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConvLayer(_Layer):
    type: Literal["conv"] = "conv"
    out_channels: int = Field(ge=1, le=65536)
    kernel_size: Pair
    stride: Pair = 1
    padding: Pair = 0
    dilation: Pair = 1
    groups: int = Field(1, ge=1)
    bias: bool = True

    @model_validator(mode="after")
    def _positive(self) -> ConvLayer:
        for name in ("kernel_size", "stride", "dilation"):
            if min(_pair(getattr(self, name))) < 1:
                raise ValueError(f"{name} must be positive")
        if min(_pair(self.padding)) < 0:
            raise ValueError("padding must be non-negative")
        if self.out_channels % self.groups:
            raise ValueError("out_channels must be divisible by groups")
        return self


class PoolLayer(_Layer):
    type: Literal["pool"] = "pool"
    kind: Literal["max", "avg"] = "max"
    kernel_size: Pair = 2
    stride: Pair | None = None

    @model_validator(mode="after")
    def _positive(self) -> PoolLayer:
        if min(_pair(self.kernel_size)) < 1 or (
            self.stride is not None and min(_pair(self.stride)) < 1
        ):
            raise ValueError("kernel_size and stride must be positive")
        return self


class FcLayer(_Layer):
    type: Literal["fc"] = "fc"
    out_features: int = Field(ge=1, le=1_000_000)
    bias: bool = True


class ReluLayer(_Layer):
    type: Literal["relu"] = "relu"


class DropoutLayer(_Layer):
    type: Literal["dropout"] = "dropout"
    p: float = Field(0.5, ge=0.0, lt=1.0)


class FlattenLayer(_Layer):
    type: Literal["flatten"] = "flatten"


class BatchNormLayer(_Layer):
    type: Literal["batchnorm"] = "batchnorm"


Layer = Annotated[
    ConvLayer | PoolLayer | FcLayer | ReluLayer | DropoutLayer | FlattenLayer | BatchNormLayer,
    Field(discriminator="type"),
]


@dataclass(frozen=True)
class LayerShape:
    """The walk of one layer: input and output shapes, and its dense parameter counts."""

    index: int
    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weights: int  # virtual weights (conv filters, fc matrix)
    biases: int  # bias, batchnorm affine parameters: stored densely by every method


def _pair(v: Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ArchitectureSpec(BaseModel):
    """A network: input (C, H, W), the number of classes and the layers in order."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    input_shape: tuple[int, int, int]
    num_classes: int = Field(ge=2, le=100_000)
    layers: list[Layer] = Field(min_length=1, max_length=200)

    def check(self, max_virtual_weights: int | None = None) -> list[LayerShape]:
        """Walk the shapes; raise :class:`SpecError` naming the first bad layer."""
        if min(self.input_shape) < 1:
            raise SpecError(None, f"input_shape {self.input_shape} must be positive")
        shape: tuple[int, ...] = tuple(self.input_shape)
        out: list[LayerShape] = []
        total = 0
        for i, layer in enumerate(self.layers):
            weights = biases = 0
            new = shape
            if isinstance(layer, ConvLayer):
                if len(shape) != 3:
                    raise SpecError(i, "conv needs a (C, H, W) input, got a flat one", "conv")
                c, h, w = shape
                if c % layer.groups:
                    raise SpecError(
                        i, f"input channels {c} not divisible by groups {layer.groups}", "conv"
                    )
                kh, kw = _pair(layer.kernel_size)
                sh, sw = _pair(layer.stride)
                ph, pw = _pair(layer.padding)
                dh, dw = _pair(layer.dilation)
                oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
                ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
                if oh < 1 or ow < 1:
                    raise SpecError(i, f"kernel {kh}x{kw} does not fit the {h}x{w} input", "conv")
                weights = layer.out_channels * (c // layer.groups) * kh * kw
                biases = layer.out_channels if layer.bias else 0
                new = (layer.out_channels, oh, ow)
            elif isinstance(layer, PoolLayer):
                if len(shape) != 3:
                    raise SpecError(i, "pool needs a (C, H, W) input, got a flat one", "pool")
                c, h, w = shape
                kh, kw = _pair(layer.kernel_size)
                sh, sw = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
                oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
                if oh < 1 or ow < 1:
                    raise SpecError(i, f"pool {kh}x{kw} does not fit the {h}x{w} input", "pool")
                new = (c, oh, ow)
            elif isinstance(layer, FcLayer):
                n_in = 1
                for s in shape:
                    n_in *= s
                weights = n_in * layer.out_features
                biases = layer.out_features if layer.bias else 0
                new = (layer.out_features,)
            elif isinstance(layer, FlattenLayer):
                n = 1
                for s in shape:
                    n *= s
                new = (n,)
            elif isinstance(layer, BatchNormLayer):
                biases = 2 * shape[0]
            total += weights + biases
            if max_virtual_weights is not None and total > max_virtual_weights:
                raise SpecError(
                    i,
                    f"the network reaches {total:,} virtual weights here, over the cap of "
                    f"{max_virtual_weights:,}",
                    layer.type,
                )
            out.append(LayerShape(i, layer.type, shape, new, weights, biases))
            shape = new
        last = self.layers[-1]
        if not isinstance(last, FcLayer):
            raise SpecError(len(self.layers) - 1, "the last layer must be fc", last.type)
        if last.out_features != self.num_classes:
            raise SpecError(
                len(self.layers) - 1,
                f"out_features {last.out_features} != num_classes {self.num_classes}",
                "fc",
            )
        return out

    def virtual_weights(self) -> int:
        """Dense parameter count (weights + biases + batchnorm affine)."""
        return sum(s.weights + s.biases for s in self.check())


_LAYER_TAGS = ("conv", "pool", "fc", "relu", "dropout", "flatten", "batchnorm")


def parse_spec(data: ArchitectureSpec | dict[str, Any]) -> ArchitectureSpec:
    """Validate a dict into a spec; a pydantic error becomes a SpecError naming the layer."""
    if isinstance(data, ArchitectureSpec):
        return data
    try:
        return ArchitectureSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = err.get("loc", ())
        layer = None
        layer_type = None
        if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int):
            layer = loc[1]
            raw = data.get("layers", []) if isinstance(data, dict) else []
            if isinstance(raw, list) and layer < len(raw) and isinstance(raw[layer], dict):
                layer_type = raw[layer].get("type")
        rest = loc[3:] if len(loc) > 2 and loc[2] in _LAYER_TAGS else loc[2:]  # skip the tag
        field = ".".join(str(p) for p in rest)
        reason = err["msg"] + (f" (field {field!r})" if field else "")
        if layer is None:
            reason = f"{'.'.join(str(p) for p in loc)}: {err['msg']}" if loc else err["msg"]
        raise SpecError(layer, reason, layer_type) from e
