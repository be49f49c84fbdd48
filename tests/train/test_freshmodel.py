"""The loop with the real models of freshcore.build_model (the mnist-cnn preset on 8x8 digits)."""

from __future__ import annotations

import pytest
import torch

import freshcore
from freshcore.train import CheckpointError, TrainConfig, train


def build(method: str = "freshnets", compression: float = 1 / 16, seed: int = 0):
    return freshcore.build_model(
        "mnist-cnn",
        method=method,
        compression=compression,
        seed=seed,
        input_shape=(1, 8, 8),
        num_classes=10,
    )


def cfg(**kwargs) -> TrainConfig:
    return TrainConfig(**{"epochs": 5, "batch_size": 64, "device": "cpu", **kwargs})


@pytest.mark.parametrize("method", ["freshnets", "hashednets", "dense"])
def test_compressed_models_learn_digits(digits, method: str) -> None:
    model = build(method, 1.0 if method == "dense" else 1 / 16)
    result = train(model, digits, cfg())
    assert result.test_accuracy > 0.9, result.history
    assert model.input_mean.tolist() == pytest.approx(digits.mean)
    assert model.input_std.tolist() == pytest.approx(digits.std)
    assert not model.training


def test_freshmodel_resume_is_exact(digits) -> None:
    config = cfg(epochs=3)  # the preset has dropout: its random stream must resume too
    straight = build()
    train(straight, digits, config)

    saved: list[bytes] = []

    def on_epoch(metrics, checkpoint) -> bool:
        saved.append(checkpoint())
        return metrics.epoch == 2

    train(build(), digits, config, on_epoch)
    resumed = build()
    train(resumed, digits, config, resume=saved[-1])
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_method_or_seed_is_refused(digits) -> None:
    saved: list[bytes] = []
    train(build(), digits, cfg(epochs=1), lambda m, ck: saved.append(ck()))
    with pytest.raises(CheckpointError, match="method 'freshnets', not 'hashednets'"):
        train(build("hashednets"), digits, cfg(), resume=saved[0])
    with pytest.raises(CheckpointError, match="seed 0, not 1"):
        train(build(seed=1), digits, cfg(), resume=saved[0])
