"""Fixtures for the training-loop tests: scikit-learn's bundled digits and a small CNN."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn


@dataclass
class DigitsData:
    """The shape of ``freshcore.data.Dataset`` that ``train`` reads (8x8 digits, 10 classes)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list[float]
    std: list[float]


def make_digits() -> DigitsData:
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    x, y = x[order], y[order]
    train, val = slice(0, 1200), slice(1200, 1500)
    test = slice(1500, None)
    mean = [float(x[train].mean())]
    std = [float(x[train].std())]
    return DigitsData(x[train], y[train], x[val], y[val], x[test], y[test], mean, std)


class SmallCNN(nn.Module):
    """A stand-in with the FreshModel surface that train() uses (normalisation buffers)."""

    def __init__(self, dropout: float = 0.0, classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(1))
        self.register_buffer("input_std", torch.ones(1))
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(32 * 2 * 2, classes),
        )

    def set_normalization(self, mean: list[float], std: list[float]) -> None:
        self.input_mean.copy_(torch.tensor(mean))
        self.input_std.copy_(torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.input_mean.view(1, -1, 1, 1)) / self.input_std.view(1, -1, 1, 1))


@pytest.fixture(scope="session")
def digits() -> DigitsData:
    return make_digits()


@pytest.fixture
def small() -> Callable[..., nn.Module]:
    """Build the small CNN with a fixed initialisation: ``small(seed=0, dropout=0.0)``."""

    def build(seed: int = 0, **kwargs: Any) -> nn.Module:
        torch.manual_seed(seed)
        return SmallCNN(**kwargs)

    return build


@pytest.fixture
def with_data() -> Callable[..., DigitsData]:
    """A copy of a data set with some fields replaced (for invalid-input tests)."""
    return lambda data, **changes: replace(data, **changes)


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine's two cores are shared: keep each test to one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
