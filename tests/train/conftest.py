"""Fixtures for the training-loop tests: the bundled digits data set and a small CNN."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

import freshcore.data as fdata
from freshcore.data import Dataset


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
def digits(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """scikit-learn's 8x8 digits through the data registry (bundled: nothing is downloaded)."""
    return fdata.load("digits", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def small() -> Callable[..., nn.Module]:
    """Build the small CNN with a fixed initialisation: ``small(seed=0, dropout=0.0)``."""

    def build(seed: int = 0, **kwargs: Any) -> nn.Module:
        torch.manual_seed(seed)
        return SmallCNN(**kwargs)

    return build


@pytest.fixture
def with_data() -> Callable[..., Dataset]:
    """A copy of a data set with some fields replaced (for invalid-input tests)."""
    return lambda data, **changes: replace(data, **changes)


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine's two cores are shared: keep each test to one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
