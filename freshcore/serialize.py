"""The compact model file: safetensors (learned tensors) with JSON metadata in its header.

The header's ``freshnets`` entry holds the format version, spec, method, compression, seed, plan
(per-layer bucket counts, ranks, widths and hash seeds), allocation, budget policy, normalisation,
class names and free ``meta``. Hash indices are regenerated from the seeds; nothing is pickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from freshcore.build import FreshModel, model_from_plan
from freshcore.spec import ArchitectureSpec, SpecError, parse_spec

FORMAT = "freshnets"
MAX_VIRTUAL_WEIGHTS = 50_000_000
FORMAT_VERSION = 1
_KEY = "freshnets"


class ModelFormatError(ValueError):
    """Not a valid FreshNets model file: malformed, truncated, wrong version or inconsistent."""


def _half_names(model: FreshModel) -> set[str]:
    """Learned compressed tensors stored as float16 when ``half``: everything but buffers."""
    return {name for name, _ in model.named_parameters()}


def to_bytes(model: FreshModel, half: bool = False) -> bytes:
    """The model as safetensors bytes; ``half`` stores learned values as float16 (half the size)."""
    state = model.state_dict()
    halves = _half_names(model) if half else set()
    tensors = {
        name: (
            t.detach().to("cpu", torch.float16) if name in halves else t.detach().cpu()
        ).contiguous()
        for name, t in state.items()
    }
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": model.spec.model_dump(mode="json"),
        "method": model.method,
        "compression": model.compression,
        "seed": model.seed,
        "plan": model.plan,
        "allocation": model.allocation,
        "budget_policy": model.budget_policy,
        "normalization": {
            "mean": model.input_mean.tolist(),
            "std": model.input_std.tolist(),
        },
        "class_names": model.class_names,
        "half": bool(half),
        "meta": model.meta,
    }
    return st_save(tensors, metadata={_KEY: json.dumps(header, separators=(",", ":"))})


def _read_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ModelFormatError(
            f"not a model file: {len(data)} bytes is shorter than the 8-byte prefix"
        )
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ModelFormatError(
            f"truncated model file: the header claims {n} bytes but only {len(data) - 8} follow"
        )
    try:
        raw = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(
            f"not a model file: the safetensors header is not JSON ({e})"
        ) from None
    meta = raw.get("__metadata__") if isinstance(raw, dict) else None
    if not isinstance(meta, dict) or _KEY not in meta:
        raise ModelFormatError(
            "not a FreshNets model: the safetensors header has no 'freshnets' entry"
        )
    try:
        header = json.loads(meta[_KEY])
    except (TypeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"malformed FreshNets metadata: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFormatError("malformed FreshNets metadata: not a 'freshnets' object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"unsupported model format version {version!r}; "
            f"this freshcore reads version {FORMAT_VERSION}"
        )
    return header


def from_bytes(data: bytes, max_virtual_weights: int | None = MAX_VIRTUAL_WEIGHTS) -> FreshModel:
    """Rebuild a model from :func:`to_bytes` output; ModelFormatError on any inconsistency.

    ``max_virtual_weights`` bounds the network a file may describe (its hash indices take 8 bytes
    per virtual weight), so a hostile header cannot make the loader allocate without limit.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ModelFormatError(f"model data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    header = _read_header(data)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ModelFormatError(f"corrupt tensor data: {e}") from None
    try:
        spec = parse_spec(header["spec"])
        _check_plan(spec, header["plan"], max_virtual_weights)
        model = model_from_plan(
            spec,
            str(header["method"]),
            float(header["compression"]),
            int(header["seed"]),
            header["plan"],
            header.get("allocation"),
            header.get("budget_policy"),
        )
    except SpecError as e:
        raise ModelFormatError(f"invalid spec in model file: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelFormatError(
            f"inconsistent model file: cannot rebuild the model ({e!r})"
        ) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelFormatError(
            f"inconsistent model file: tensors missing {missing[:5]} / unexpected {extra[:5]}"
        )
    for name, t in tensors.items():
        want = expected[name]
        if tuple(t.shape) != tuple(want.shape):
            raise ModelFormatError(
                f"inconsistent model file: tensor {name!r} has shape {tuple(t.shape)}, "
                f"the spec needs {tuple(want.shape)}"
            )
        if t.dtype not in (want.dtype, torch.float16) or (
            t.dtype == torch.float16 and not want.is_floating_point()
        ):
            raise ModelFormatError(f"inconsistent model file: tensor {name!r} has dtype {t.dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelFormatError(f"corrupt model file: tensor {name!r} has non-finite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    if not (model.input_std > 0).all():
        raise ModelFormatError("corrupt model file: input_std must be positive")
    names = header.get("class_names")
    if names is not None and (
        not isinstance(names, list)
        or len(names) != spec.num_classes
        or not all(isinstance(n, str) for n in names)
    ):
        raise ModelFormatError(
            f"inconsistent model file: class_names must be {spec.num_classes} strings"
        )
    model.class_names = names
    meta = header.get("meta") or {}
    if not isinstance(meta, dict):
        raise ModelFormatError("malformed model file: meta must be an object")
    model.meta = meta
    model.eval()
    return model


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON metadata of a model file without building the model (for listings)."""
    return _read_header(bytes(data))


def _check_plan(spec: ArchitectureSpec, plan: Any, max_virtual_weights: int | None) -> None:
    """Bound every count in the plan by its layer's size before anything is allocated."""
    shapes = spec.check(max_virtual_weights)
    if not isinstance(plan, list) or len(plan) != len(shapes):
        raise ValueError(f"plan must list {len(shapes)} layers")
    for s, entry in zip(shapes, plan, strict=True):
        if entry is None:
            continue
        if not isinstance(entry, dict) or not s.weights:
            raise ValueError(f"plan entry {s.index} does not match a {s.type} layer")
        for key, value in entry.items():
            counts = value if isinstance(value, list) else [value]
            if key == "kind" or key == "seed":
                continue
            if key == "balanced":
                if not isinstance(value, bool):
                    raise ValueError(f"plan entry {s.index}: balanced={value!r} is not a boolean")
                continue
            limit = s.out_shape[0] if key == "width" else s.weights
            if not all(isinstance(c, int) and 0 <= c <= limit for c in counts):
                raise ValueError(f"plan entry {s.index}: {key}={value!r} outside [0, {limit}]")


def save(model: FreshModel, path: str | Path, half: bool = False) -> int:
    """Write the model file; returns its size in bytes."""
    data = to_bytes(model, half=half)
    Path(path).write_bytes(data)
    return len(data)


def load(path: str | Path, max_virtual_weights: int | None = MAX_VIRTUAL_WEIGHTS) -> FreshModel:
    return from_bytes(Path(path).read_bytes(), max_virtual_weights)
