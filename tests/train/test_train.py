"""The training loop on real data: accuracy, callbacks, stopping, divergence, distillation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from freshcore.train import EpochMetrics, TrainConfig, TrainingError, evaluate, train

SPLITS = ("train", "val", "test")


def steps(data) -> int:
    """Batches per epoch at batch size 64."""
    return math.ceil(len(data.y_train) / 64)


def cfg(**kwargs: Any) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 64, "device": "cpu"}
    base.update(kwargs)
    return TrainConfig(**base)


def test_trains_digits_far_above_chance(digits, small) -> None:
    model = small(dropout=0.1)
    seen: list[EpochMetrics] = []
    result = train(model, digits, cfg(epochs=5), on_epoch=lambda m, _: seen.append(m))
    assert result.test_accuracy > 0.93  # chance is 0.10
    assert [m.epoch for m in result.history] == [1, 2, 3, 4, 5] == [m.epoch for m in seen]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert not result.stopped and not result.early_stopped
    assert all(0 <= m.val_accuracy <= 1 and m.seconds > 0 for m in result.history)
    # the best-validation weights are the ones left in the model, which ends in eval mode
    best = result.history[result.best_epoch - 1]
    assert best.val_accuracy == max(m.val_accuracy for m in result.history)
    assert evaluate(model, digits.x_val, digits.y_val)[1] == pytest.approx(best.val_accuracy)
    assert not model.training
    # the data set's normalisation is set on the model
    assert model.input_mean.tolist() == pytest.approx(digits.mean)
    assert model.input_std.tolist() == pytest.approx(digits.std)


def test_adam_with_warmup_and_step_schedule(digits, small) -> None:
    config = cfg(optimizer="adam", schedule="step", warmup_epochs=1, step_size=2, epochs=4)
    result = train(small(), digits, config)
    assert result.test_accuracy > 0.85
    rates = [m.learning_rate for m in result.history]
    assert rates[0] == pytest.approx(1e-3)  # the warm-up ends on the full rate
    assert rates[1] == pytest.approx(1e-3) and rates[2] == pytest.approx(1e-4)


def test_dict_config_is_validated(digits, small) -> None:
    result = train(small(), digits, {"epochs": 1, "batch_size": 128, "device": "cpu"})
    assert len(result.history) == 1
    with pytest.raises(ValueError, match="batch_size"):
        train(small(), digits, {"epochs": 1, "batch_size": 0})


def test_callback_stops_cooperatively(digits, small) -> None:
    result = train(small(), digits, cfg(epochs=10), on_epoch=lambda m, _: m.epoch == 2)
    assert result.stopped and len(result.history) == 2
    assert result.test_accuracy > 0.5


def test_should_stop_cancels_between_batches(digits, small) -> None:
    progress: list[tuple[int, int]] = []
    result = train(
        small(),
        digits,
        cfg(epochs=10),
        on_batch=lambda done, total: progress.append((done, total)),
        should_stop=lambda: len(progress) >= 25,
    )
    assert result.stopped
    assert len(progress) == 25
    n = steps(digits)
    assert progress[:n] == [(i, n) for i in range(1, n + 1)]
    assert len(result.history) == 25 // n  # the unfinished epoch is dropped


def test_max_train_samples_takes_a_fixed_subset(digits, small) -> None:
    totals: set[int] = set()
    config = cfg(epochs=1, max_train_samples=300)
    train(small(), digits, config, on_batch=lambda done, total: totals.add(total))
    assert totals == {math.ceil(300 / 64)}


class Constant(nn.Module):
    """Ignores its input and its parameter has a zero gradient: nothing it outputs can improve."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(10.0).expand(len(x), 10) + 0 * self.w


def test_patience_stops_early(digits) -> None:
    result = train(Constant(), digits, cfg(epochs=10, patience=2))
    assert result.early_stopped and not result.stopped
    assert len(result.history) == 3 and result.best_epoch == 1


def test_nan_loss_raises_with_epoch(digits, small) -> None:
    with pytest.raises(TrainingError, match=r"NaN or infinite at epoch 1 batch \d+") as err:
        train(small(), digits, cfg(lr=1e6, momentum=0.0, epochs=3))
    assert err.value.epoch == 1


class InfAt(nn.Module):
    """Wraps a model and makes a logit infinite on the n-th training batch."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                out = out + math.inf
        return out


def test_injected_inf_names_the_exact_batch(digits, small) -> None:
    with pytest.raises(TrainingError, match=f"epoch 2 batch 5 of {steps(digits)}") as err:
        train(InfAt(small(), steps(digits) + 5), digits, cfg(epochs=3))
    assert (err.value.epoch, err.value.batch) == (2, 5)


class Materializing(nn.Module):
    """Counts materialize() calls, which must come in eval mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.materialized = inner, 0

    def materialize(self) -> None:
        assert not self.training, "materialize() is for eval mode"
        self.materialized += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_eval_materializes(digits, small) -> None:
    model = Materializing(small())
    train(model, digits, cfg(epochs=2))
    assert model.materialized == 3  # each epoch's validation and the final test


class LinearTeacher(nn.Module):
    """A fixed random linear classifier: its labels have nothing to do with the digits' labels."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.register_buffer("w", torch.randn(64, 10, generator=gen) * 2.0)
        self.register_buffer("b", torch.randn(10, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - 0.3) @ self.w + self.b


def test_distillation_follows_the_teacher(digits, small) -> None:
    teacher = LinearTeacher()
    teacher_labels = teacher(digits.x_test).argmax(1)
    chance = (teacher_labels == digits.y_test).float().mean().item()
    student = small()
    agreement: list[float] = []

    def on_epoch(metrics, _checkpoint) -> None:
        with torch.no_grad():  # the model is in eval mode after the validation pass
            same = student(digits.x_test).argmax(1) == teacher_labels
        agreement.append(same.float().mean().item())

    config = cfg(epochs=8, distill_alpha=1.0, distill_temperature=2.0)
    result = train(student, digits, config, on_epoch, teacher=teacher)
    assert agreement[-1] > 0.7 and agreement[-1] > agreement[0]  # learnt the teacher's function
    assert max(m.val_accuracy for m in result.history) < chance + 0.15  # not the true labels


def test_distillation_weight_zero_ignores_the_teacher(digits, small) -> None:
    plain, distilled = small(), small()
    train(plain, digits, cfg(epochs=1))
    train(distilled, digits, cfg(epochs=1, distill_alpha=0.0), teacher=LinearTeacher())
    for a, b in zip(plain.state_dict().values(), distilled.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_distillation_with_augmentation_runs_the_teacher_per_batch(digits, small) -> None:
    modes: list[bool] = []
    teacher = LinearTeacher()
    teacher.register_forward_hook(lambda module, *_: modes.append(module.training))
    teacher.train()
    config = cfg(epochs=1, augment=True, distill_alpha=0.5)
    result = train(small(), digits, config, teacher=teacher)
    # one probe of the output shape, then one call per batch: the targets change with the shifts
    assert len(modes) == 1 + steps(digits)
    assert not any(modes)  # the teacher runs in eval mode ...
    assert teacher.training  # ... and gets its own mode back
    assert math.isfinite(result.history[0].train_loss)


def test_teacher_with_other_classes_is_refused(digits, small) -> None:
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match=r"teacher returns \(3,\) outputs per image"):
        train(small(), digits, cfg(epochs=1), teacher=teacher)


def test_augmentation_trains(digits, small) -> None:
    result = train(small(), digits, cfg(epochs=5, augment=True, augment_shift=1))
    assert result.test_accuracy > 0.85


def test_dropout_setting_overrides_the_architectures_rate(digits, small) -> None:
    """Training a dropout-0.9 network with ``dropout=0`` is training a dropout-free one."""
    overridden, plain = small(dropout=0.9), small(dropout=0.0)
    train(overridden, digits, cfg(epochs=2, dropout=0.0))
    train(plain, digits, cfg(epochs=2))
    assert all(m.p == 0.0 for m in overridden.modules() if isinstance(m, nn.Dropout))
    for a, b in zip(overridden.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    kept = small(dropout=0.9)
    train(kept, digits, cfg(epochs=1))  # None: the architecture's rate stays
    assert [m.p for m in kept.modules() if isinstance(m, nn.Dropout)] == [0.9]


def test_bad_labels_and_shapes_are_refused(digits, small, with_data) -> None:
    bad = with_data(digits, y_val=digits.y_val + 5)
    with pytest.raises(ValueError, match=r"y_val has labels in \[5, 14\] but the model has 10"):
        train(small(), bad, cfg(epochs=1))
    flat = with_data(digits, x_train=digits.x_train.flatten(1))
    with pytest.raises(ValueError, match="x_train must be"):
        train(small(), flat, cfg(epochs=1))
    big = with_data(
        digits,
        **{f"x_{s}": torch.zeros(len(getattr(digits, f"y_{s}")), 1, 12, 12) for s in SPLITS},
    )
    with pytest.raises(ValueError, match=r"cannot take this data set's images \(1, 12, 12\)"):
        train(small(), big, cfg(epochs=1))


def test_gradient_norm_is_clipped(digits, small) -> None:
    model = small()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = cfg(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="none")
    train(model, digits, TrainConfig(**{**config.to_dict(), "max_grad_norm": 1e-6}))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # each step moves the weights by lr x (a gradient of norm at most 1e-6)
    assert torch.linalg.vector_norm(after - before) <= steps(digits) * 0.1 * 1e-6 * 1.01


def test_callers_random_state_is_left_alone(digits, small) -> None:
    model = small(dropout=0.2)
    before = torch.get_rng_state()
    train(model, digits, cfg(epochs=1, augment=True))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback of device 'auto'")
def test_cuda_graph_without_cuda_trains_eagerly(digits, small) -> None:
    """cuda_graph with device "auto" is portable: on a machine without CUDA the run is the
    eager one, to the bit (the GPU path is tested in tests/gpu)."""
    runs = []
    for graph in (False, True):
        model = small(dropout=0.1)
        result = train(model, digits, cfg(epochs=2, device="auto", cuda_graph=graph))
        runs.append(([{**m.to_dict(), "seconds": 0} for m in result.history], model.state_dict()))
    (eager_history, eager_weights), (graph_history, graph_weights) = runs
    assert graph_history == eager_history
    assert all(torch.equal(eager_weights[k], graph_weights[k]) for k in eager_weights)
