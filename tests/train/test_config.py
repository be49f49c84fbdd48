"""TrainConfig: defaults, JSON round trip, and errors that name the field."""

from __future__ import annotations

import itertools
import math

import pytest

from freshcore.train import TrainConfig, TrainConfigError, learning_rate_at


def test_defaults_and_round_trip() -> None:
    config = TrainConfig()
    assert config.optimizer == "sgd" and config.nesterov and config.effective_lr == 0.02
    assert TrainConfig(optimizer="adam").effective_lr == 1e-3
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"lr": 1, "momentum": 0}).lr == 1  # JSON integers are numbers


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": "10"}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"schedule": "linear"}, "schedule"),
        ({"warmup_epochs": 10, "epochs": 10}, "warmup_epochs"),
        ({"patience": 0}, "patience"),
        ({"device": "tpu"}, "device"),
        ({"distill_alpha": 1.5}, "distill_alpha"),
        ({"distill_temperature": 0}, "distill_temperature"),
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": "0.5"}, "dropout"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        ({"augment": "yes"}, "augment"),
        ({"seed": -1}, "seed"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"cuda_graph": True, "device": "cpu"}, "cuda_graph"),
        ({"cuda_graph": 1}, "cuda_graph"),
    ],
)
def test_bad_fields_are_named(data: dict, field: str) -> None:
    with pytest.raises(TrainConfigError, match=rf"TrainConfig\.{field}:") as err:
        TrainConfig.from_dict(data)
    assert err.value.field == field
    assert isinstance(err.value, ValueError)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs"):
        TrainConfig(epochs=-3)


def test_learning_rate_schedules() -> None:
    cosine = TrainConfig(epochs=10, lr=0.1, warmup_epochs=2)
    rates = [learning_rate_at(cosine, s, 5) for s in range(50)]
    assert rates[:10] == pytest.approx([0.1 * (s + 1) / 10 for s in range(10)])
    assert rates[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] < 0.001
    step = TrainConfig(epochs=9, lr=0.1, schedule="step")  # step_size defaults to epochs // 3
    assert [learning_rate_at(step, e * 4, 4) for e in (0, 2, 3, 6, 8)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.001]
    )
    flat = TrainConfig(lr=0.1, schedule="none")
    assert {learning_rate_at(flat, s, 7) for s in range(70)} == {0.1}
    assert math.isclose(learning_rate_at(TrainConfig(lr=0.1), 0, 10), 0.1)
