"""CIFAR-10 from the official binary archive (`cifar-10-binary.tar.gz`, Krizhevsky 2009).

Only the binary version is read: each record is one label byte then 3,072 pixel bytes (the red,
green and blue 32x32 planes). The python version is a pickle and is never opened.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on the CIFAR page
ARCHIVE_SIZE = 170_052_171
URL = "https://www.cs.toronto.edu/~kriz/" + ARCHIVE
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_MEMBERS = tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = "cifar-10-batches-bin/test_batch.bin"
RECORD = 1 + 3 * 32 * 32
PER_BATCH = 10_000


def _read_batch(archive: tarfile.TarFile, name: str) -> tuple[np.ndarray, np.ndarray]:
    member = archive.getmember(name)  # KeyError when absent
    if not member.isfile() or member.size != RECORD * PER_BATCH:
        raise ValueError(f"{name}: expected {RECORD * PER_BATCH} bytes, found {member.size}")
    f = archive.extractfile(member)
    assert f is not None
    records = np.frombuffer(f.read(), dtype=np.uint8).reshape(PER_BATCH, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        raise ValueError(f"{name}: label {labels.max()} out of range")
    return records[:, 1:].reshape(PER_BATCH, 3, 32, 32), labels


def read_archive(path: str | Path) -> dict[str, np.ndarray]:
    """The six batches as arrays (x uint8 (N, 3, 32, 32), y int64), read from the archive
    without extracting anything to disk."""
    with tarfile.open(path, mode="r:gz") as archive:
        train = [_read_batch(archive, name) for name in TRAIN_MEMBERS]
        x_test, y_test = _read_batch(archive, TEST_MEMBER)
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }
