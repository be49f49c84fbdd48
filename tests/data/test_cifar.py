"""CIFAR-10 from the binary archive: the reader, and refusal of anything but the official file."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from freshcore.data import DatasetUnavailable, cifar, fetch, get_info

RECORD = cifar.RECORD


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def batch(seed: int) -> bytes:
    # A pattern that differs per record and position, yet compresses fast.
    records = np.arange(RECORD)[None, :] + 7 * np.arange(cifar.PER_BATCH)[:, None] + seed
    records = (records % 251).astype(np.uint8)
    records[:, 0] = np.arange(cifar.PER_BATCH) % 10
    return records.tobytes()


@pytest.fixture
def layout_archive(tmp_path, monkeypatch) -> Path:
    """An archive with the official layout and made-up pixels (not the real data), with 100
    records a batch instead of 10,000 to stay small."""
    monkeypatch.setattr(cifar, "PER_BATCH", 100)
    (tmp_path / "cifar").mkdir()
    path = tmp_path / "cifar" / cifar.ARCHIVE
    members = {name: batch(i) for i, name in enumerate(cifar.TRAIN_MEMBERS)}
    members[cifar.TEST_MEMBER] = batch(9)
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(cifar.CLASSES).encode()
    write_archive(path, members)
    return path


def test_reader_decodes_the_binary_layout(layout_archive):
    arrays = cifar.read_archive(layout_archive)
    assert arrays["x_train"].shape == (500, 3, 32, 32)
    assert arrays["x_test"].shape == (100, 3, 32, 32)
    assert np.bincount(arrays["y_train"]).tolist() == [50] * 10
    raw = np.frombuffer(batch(9), np.uint8).reshape(cifar.PER_BATCH, RECORD)
    # Byte 0 is the label, then the red, green and blue planes, row by row.
    assert np.array_equal(arrays["x_test"][7, 1, 2], raw[7, 1 + 1024 + 64 : 1 + 1024 + 96])


def test_reader_refuses_a_truncated_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "PER_BATCH", 100)
    path = tmp_path / "short.tar.gz"
    write_archive(path, {cifar.TRAIN_MEMBERS[0]: batch(0)[:-1]})
    with pytest.raises(ValueError, match="expected 307300 bytes"):
        cifar.read_archive(path)


def test_only_the_official_archive_is_accepted(layout_archive, tmp_path, monkeypatch):
    tmp_path = tmp_path / "cache"
    monkeypatch.setenv("FRESHNETS_OFFLINE", "1")
    monkeypatch.delenv("FRESHNETS_CIFAR10_PATH", raising=False)
    assert not get_info("cifar10", tmp_path).available
    with pytest.raises(DatasetUnavailable, match="FRESHNETS_CIFAR10_PATH"):
        fetch("cifar10", tmp_path)
    monkeypatch.setenv("FRESHNETS_CIFAR10_PATH", str(layout_archive.parent))
    assert get_info("cifar10", tmp_path).available  # the user's file is there...
    with pytest.raises(DatasetUnavailable, match="expected 170052171"):
        fetch("cifar10", tmp_path)  # ...but it is not the published archive
    assert not (tmp_path / "cifar10.npz").exists()


def test_archive_is_converted_once_into_the_cache(layout_archive, tmp_path, monkeypatch):
    """The whole path with the made-up archive standing in for the official one."""
    from freshcore.data import load, registry
    from freshcore.data.sources import FileSpec, file_digest

    monkeypatch.setenv("FRESHNETS_OFFLINE", "1")
    monkeypatch.setattr(
        registry,
        "CIFAR_FILE",
        FileSpec(
            cifar.ARCHIVE,
            layout_archive.stat().st_size,
            md5=file_digest(layout_archive, "md5"),
            gunzip=False,
        ),
    )
    cache = tmp_path / "cache"
    ds = load("cifar10", cache, local_path=layout_archive)
    assert ds.x_train.shape[1:] == (3, 32, 32) and len(ds.mean) == 3
    assert len(ds.x_train) + len(ds.x_val) == 500 and len(ds.x_test) == 100
    assert (cache / "cifar10.npz").is_file()
    assert not list((cache / "cifar10-download").iterdir())  # the archive copy is gone
    assert layout_archive.is_file()  # the user's file is untouched
    again = load("cifar10", cache)  # from the cache now: no source needed
    assert again.y_test.tolist() == ds.y_test.tolist()
