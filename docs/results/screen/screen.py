"""One screening run through the harness: ``screen.py NAME METHOD FACTOR EPOCHS DROPOUT TRAIN
MODEL`` (TRAIN and MODEL are JSON overrides). Runs are stored in runs/screen like any table run."""

import json
import sys

import torch

from freshcore.presets import resolve_spec
from freshcore.reproduce.plan import RunSpec, default_protocol
from freshcore.reproduce.runner import DataCache, RunStore, run_one

torch.set_num_threads(1)
name, method, factor, epochs, dropout, train_json, model_json = sys.argv[1:8]
arch: str | dict = "mnist-cnn"
if float(dropout) != 0.5:  # the screen predates TrainConfig.dropout: it edits the architecture
    spec = resolve_spec("mnist-cnn", (1, 28, 28), 10).model_dump()
    for layer in spec["layers"]:
        if layer.get("type") == "dropout":
            layer["p"] = float(dropout)
    arch = spec
train = {
    **default_protocol(epochs=int(epochs)).base,  # the table's training, with lr 0.02
    "lr": 0.02,
    **json.loads(train_json),
}
model = {
    "budget_policy": {"kind": "conv-boost", "conv_factor": 4},
    "allocation": {"shape": "exponential", "decay": 0.5},
    **json.loads(model_json),
}
run = RunSpec("mnist", method, factor, 0, arch, train=train, model=model)  # type: ignore[arg-type]
record = run_one(run, RunStore("runs/screen"), DataCache(), device="cpu")
result = record["result"]
val_errors = [round(1 - h["val_accuracy"], 4) for h in record.get("history", [])]
print(
    f"{name}: test {100 * result['test_error']:.2f}% val {100 * result['val_error']:.2f}% "
    f"{result['seconds']:.0f}s, validation error by epoch {val_errors}",
    flush=True,
)
