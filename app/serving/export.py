"""Export a model's rebuilt dense network: ONNX, TorchScript, or a safetensors state dict.

All three start from `freshcore.to_dense(model)` (what the cache keeps), a plain `nn.Sequential`
with the same outputs, input normalisation included: float32 (N, C, H, W) in [0, 1] in, logits out.
"""

import io
import json
import threading
import warnings
from typing import Any, Literal

import onnx
import safetensors.torch
import torch
from torch import nn

import freshcore

ExportFormat = Literal["onnx", "torchscript", "dense-safetensors"]
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    "onnx": ("application/onnx", "onnx"),
    "torchscript": ("application/octet-stream", "pt"),
    "dense-safetensors": ("application/octet-stream", "safetensors"),
}
# Tracing and ONNX export keep process-wide state: one export at a time.
_export_lock = threading.Lock()


def describe(model: freshcore.FreshModel) -> dict[str, Any]:
    """What a consumer of an export needs to feed it and read it."""
    spec = model.spec
    return {
        "format": "freshnets-dense",
        "input": "float32 (N, C, H, W), pixel values in [0, 1]; normalisation is inside",
        "output": "logits (N, num_classes); softmax gives the probabilities",
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "class_names": model.class_names,
        "method": model.method,
        "compression": model.compression,
        "spec": spec.model_dump(mode="json"),
    }


def _example(info: dict[str, Any]) -> torch.Tensor:
    return torch.rand(2, *info["input_shape"], generator=torch.Generator().manual_seed(0))


def to_onnx(dense: nn.Module, info: dict[str, Any]) -> bytes:
    """ONNX with a dynamic batch axis; the metadata travels in the file's metadata_props."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter works offline; the dynamo one needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            dense,
            (_example(info),),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString()


def to_torchscript(dense: nn.Module, info: dict[str, Any]) -> bytes:
    """A traced module: `torch.jit.load(io.BytesIO(data))` runs it without freshcore."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated but still the portable format
        traced = torch.jit.trace(dense, _example(info))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"freshnets.json": json.dumps(info)})
    return buffer.getvalue()


def to_dense_safetensors(dense: nn.Module, info: dict[str, Any]) -> bytes:
    """The dense `nn.Sequential`'s state dict; the header says which module each index is."""
    tensors = {k: v.detach().clone().contiguous() for k, v in dense.state_dict().items()}
    layout = [
        {"index": name, "module": type(module).__name__, "args": module.extra_repr()}
        for name, module in dense.named_children()
    ]
    metadata = {k: json.dumps(v) for k, v in info.items()}
    metadata["layout"] = json.dumps(layout)
    return safetensors.torch.save(tensors, metadata=metadata)


EXPORTERS = {
    "onnx": to_onnx,
    "torchscript": to_torchscript,
    "dense-safetensors": to_dense_safetensors,
}


def export(dense: nn.Module, info: dict[str, Any], fmt: ExportFormat) -> bytes:
    with _export_lock:
        return EXPORTERS[fmt](dense, info)
