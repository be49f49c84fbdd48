"""Checkpoints: pickle-free bytes, exact resume, and refusal of anything that does not fit."""

from __future__ import annotations

import json
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from freshcore.train import (
    CheckpointError,
    TrainConfig,
    read_checkpoint_metadata,
    train,
)


def cfg(**kwargs: Any) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 64, "device": "cpu"}
    base.update(kwargs)
    return TrainConfig(**base)


def checkpoint_at(model: nn.Module, digits, config: TrainConfig, epoch: int) -> bytes:
    """Train until ``epoch``, take the callback's checkpoint there and stop."""
    saved: list[bytes] = []

    def on_epoch(metrics, checkpoint) -> bool:
        if metrics.epoch == epoch:
            saved.append(checkpoint())
            return True
        return False

    result = train(model, digits, config, on_epoch)
    assert result.stopped and len(saved) == 1
    return saved[0]


@pytest.mark.parametrize(
    "settings",
    [
        {"dropout": 0.2, "augment": True},  # every random stream: order, shifts, dropout
        {"optimizer": "adam", "schedule": "step", "warmup_epochs": 1, "step_size": 1},
    ],
    ids=["sgd-dropout-augment", "adam-step-warmup"],
)
def test_resume_gives_the_uninterrupted_weights(digits, small, settings) -> None:
    dropout = settings.pop("dropout", 0.0)
    config = cfg(**settings)
    straight_model = small(dropout=dropout)
    straight = train(straight_model, digits, config)

    blob = checkpoint_at(small(dropout=dropout), digits, config, epoch=2)
    resumed_model = small(seed=99, dropout=dropout)  # other weights: the checkpoint replaces them
    torch.manual_seed(12345)  # and the global RNG state must not matter
    resumed = train(resumed_model, digits, config, resume=blob)

    for (name, a), b in zip(
        straight_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name

    def timeless(history):
        return [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in history]

    assert timeless(straight.history) == timeless(resumed.history)
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.test_accuracy == straight.test_accuracy


def test_checkpoint_is_safetensors_with_json_metadata(digits, small) -> None:
    blob = checkpoint_at(small(), digits, cfg(), epoch=2)
    tensors = safetensors.torch.load(blob)
    assert {k.split("/")[0] for k in tensors} == {"model", "optim"}  # best is the current epoch
    assert any(k.endswith("/momentum_buffer") for k in tensors)
    meta = read_checkpoint_metadata(blob)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    assert meta["config"] == cfg().to_dict()
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])  # plain JSON: nothing to unpickle
    assert "freshnets_checkpoint" in header["__metadata__"]


def test_resume_after_the_last_epoch_only_tests(digits, small) -> None:
    blob = checkpoint_at(small(), digits, cfg(epochs=2), epoch=2)
    batches: list[int] = []
    result = train(
        small(seed=5), digits, cfg(epochs=2), resume=blob, on_batch=lambda d, t: batches.append(d)
    )
    assert batches == [] and len(result.history) == 2 and result.test_accuracy > 0.5


def test_resume_restores_best_weights_of_an_earlier_epoch(digits, small) -> None:
    config = cfg(epochs=4, schedule="none", lr=0.05)
    blob = checkpoint_at(small(), digits, config, epoch=1)
    meta = read_checkpoint_metadata(blob)
    assert meta["best_epoch"] == 1 and meta["best_is_current"]
    # wreck the weights after epoch 2: epoch 3 is worse, so its checkpoint must carry best/
    wreck: list[bytes] = []

    def on_epoch(metrics, checkpoint) -> bool:
        if metrics.epoch == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.0)
        if metrics.epoch == 3:
            wreck.append(checkpoint())
            return True
        return False

    model = small()
    train(model, digits, config, on_epoch, resume=blob)
    tensors = safetensors.torch.load(wreck[0])
    assert any(k.startswith("best/") for k in tensors)
    fresh = small(seed=3)
    result = train(fresh, digits, config, resume=wreck[0])
    assert result.best_epoch <= 2 and result.test_accuracy > 0.8


def test_malformed_checkpoints_are_refused(digits, small) -> None:
    blob = checkpoint_at(small(), digits, cfg(), epoch=1)
    for bad, message in [
        (b"", "truncated"),
        (b"garbage!", "truncated or not a safetensors"),
        (blob[: len(blob) // 2], "cannot be read"),
        (safetensors.torch.save({"x": torch.zeros(2)}), "not a FreshNets training checkpoint"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            train(small(), digits, cfg(), resume=bad)


def test_checkpoint_from_another_model_is_refused(digits, small) -> None:
    blob = checkpoint_at(small(), digits, cfg(), epoch=1)

    class Wider(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    with pytest.raises(CheckpointError, match="another model"):
        train(Wider(), digits, cfg(), resume=blob)
    with pytest.raises(CheckpointError, match="optimizer 'sgd'"):
        train(small(), digits, cfg(optimizer="adam"), resume=blob)
    with pytest.raises(CheckpointError, match=f"trained on {len(digits.y_train)} samples"):
        train(small(), digits, cfg(max_train_samples=600), resume=blob)


def test_checkpoint_is_only_valid_inside_the_callback(digits, small) -> None:
    kept = []
    train(small(), digits, cfg(epochs=1), lambda m, ck: kept.append(ck))
    with pytest.raises(RuntimeError, match="inside the on_epoch callback"):
        kept[0]()
