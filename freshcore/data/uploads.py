"""Users' own data sets: a `.npz` of arrays, or a folder of images with one sub-folder per class.

The `.npz` format (docs/datasets.md):
  x        (N, H, W) or (N, C, H, W), uint8 (0..255) or float32 in [0, 1]
  y        (N,) integer labels 0..K-1, every class present
  x_test   optional, same per-image shape and dtype rules as x
  y_test   optional, required with x_test
  classes  optional (K,) strings, the class names

Nothing is unpickled (np.load with allow_pickle=False), sizes are checked against
`UploadLimits` before arrays are read, and every refusal is an `UploadError` whose message
starts with the array (or file) at fault.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from freshcore.data.registry import Dataset, DatasetInfo, build_dataset, stratified_split

ALLOWED_ARRAYS = ("x", "y", "x_test", "y_test", "classes")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class UploadError(ValueError):
    """A user data set was refused; `.array` names the array or file at fault."""

    def __init__(self, array: str, problem: str):
        super().__init__(f"{array}: {problem}")
        self.array = array
        self.problem = problem


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what a user may upload (the service fills these from its settings)."""

    max_bytes: int = 200 * 1024 * 1024  # the file as sent
    max_uncompressed_bytes: int = 1024 * 1024 * 1024  # the arrays once read
    max_samples: int = 2_000_000  # training + test images
    max_image_pixels: int = 256 * 256  # H * W of one image
    min_side: int = 4
    max_channels: int = 4
    max_classes: int = 1000
    max_class_name: int = 100  # characters


def _check_images(key: str, x: np.ndarray, limits: UploadLimits) -> None:
    if x.dtype not in (np.uint8, np.float32):
        raise UploadError(
            key, f"dtype {x.dtype} is not accepted; use uint8 (0..255) or float32 (0..1)"
        )
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise UploadError(
            key, f"shape {x.shape} looks channels-last (N, H, W, C); transpose it to (N, C, H, W)"
        )
    if x.ndim not in (3, 4):
        raise UploadError(key, f"shape {x.shape} must be (N, H, W) or (N, C, H, W)")
    if len(x) == 0:
        raise UploadError(key, "holds no images")
    h, w = x.shape[-2:]
    if min(h, w) < limits.min_side:
        raise UploadError(
            key, f"images of {h}x{w} are smaller than {limits.min_side} pixels a side"
        )
    if h * w > limits.max_image_pixels:
        raise UploadError(key, f"images of {h}x{w} have more than {limits.max_image_pixels} pixels")
    if x.ndim == 4 and not 1 <= x.shape[1] <= limits.max_channels:
        raise UploadError(key, f"{x.shape[1]} channels; at most {limits.max_channels}")
    if x.dtype == np.float32:
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            raise UploadError(
                key, f"contains NaN or infinite values (first in image {int(np.argmin(finite))})"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise UploadError(
                key,
                f"float32 pixels must lie in [0, 1], found {lo:g}..{hi:g}; "
                "divide 0..255 data by 255 (or send uint8)",
            )


def _check_labels(key: str, y: np.ndarray, n: int, x_key: str) -> None:
    if y.dtype.kind not in "iu":
        raise UploadError(key, f"labels must be integers, not {y.dtype}")
    if y.ndim != 1:
        raise UploadError(key, f"shape {y.shape} must be (N,)")
    if len(y) != n:
        raise UploadError(key, f"{len(y)} labels for {n} images in {x_key}")


def _class_names(classes: np.ndarray | None, y: np.ndarray, limits: UploadLimits) -> list[str]:
    if classes is None:  # the training labels define the classes
        top = int(y.max())
        names = [str(i) for i in range(top + 1)]
    else:
        if classes.dtype.kind == "S":
            try:
                classes = np.char.decode(classes, "utf-8")
            except UnicodeDecodeError:
                raise UploadError("classes", "names are not valid UTF-8") from None
        if classes.dtype.kind != "U" or classes.ndim != 1:
            raise UploadError(
                "classes",
                f"must be a 1-D array of strings, not {classes.dtype} shaped {classes.shape}",
            )
        names = [str(c) for c in classes]
        if any(not c.strip() for c in names):
            raise UploadError("classes", "a class name is empty")
        if any(len(c) > limits.max_class_name for c in names):
            raise UploadError(
                "classes", f"a class name is longer than {limits.max_class_name} characters"
            )
        if len(set(names)) != len(names):
            raise UploadError("classes", "class names repeat")
    if len(names) < 2:
        raise UploadError(
            "classes" if classes is not None else "y", "at least 2 classes are needed"
        )
    if len(names) > limits.max_classes:
        raise UploadError(
            "classes" if classes is not None else "y",
            f"{len(names)} classes; at most {limits.max_classes}",
        )
    return names


def validate_arrays(
    arrays: dict[str, np.ndarray], limits: UploadLimits
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Check a user's arrays; returns them (x_test/y_test may be absent) and the class names."""
    for key in arrays:
        if key not in ALLOWED_ARRAYS:
            raise UploadError(key, f"unexpected array; allowed: {', '.join(ALLOWED_ARRAYS)}")
    for key in ("x", "y"):
        if key not in arrays:
            raise UploadError(key, "missing (the archive needs x and y)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        given, lacking = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise UploadError(lacking, f"missing ({given} was given without it)")
    x, y = arrays["x"], arrays["y"]
    _check_images("x", x, limits)
    _check_labels("y", y, len(x), "x")
    n = len(x)
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if x_test is not None and y_test is not None:
        _check_images("x_test", x_test, limits)
        if x_test.ndim != x.ndim or x_test.shape[1:] != x.shape[1:]:
            raise UploadError(
                "x_test", f"images shaped {x_test.shape[1:]}, but x has {x.shape[1:]}"
            )
        if x_test.dtype != x.dtype:
            raise UploadError("x_test", f"dtype {x_test.dtype} differs from x's {x.dtype}")
        _check_labels("y_test", y_test, len(x_test), "x_test")
        n += len(x_test)
    if n > limits.max_samples:
        raise UploadError("x", f"{n} images in all; at most {limits.max_samples}")
    names = _class_names(arrays.get("classes"), y, limits)
    k = len(names)
    for key, labels in (("y", y), ("y_test", y_test)):
        if labels is None:
            continue
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise UploadError(key, f"label {bad} is out of range for {k} classes (0..{k - 1})")
    absent = np.setdiff1d(np.arange(k), y)
    if len(absent):
        listed = ", ".join(f"{i} ({names[i]})" for i in absent[:10])
        raise UploadError("y", f"no training image of class {listed}")
    return arrays, names


def _open_npz(source: str | Path | bytes | BinaryIO, limits: UploadLimits) -> io.BytesIO | Path:
    if isinstance(source, bytes | bytearray | memoryview):
        size = len(source)
        handle: io.BytesIO | Path = io.BytesIO(bytes(source))
    elif isinstance(source, str | Path):
        handle = Path(source)
        if not handle.is_file():
            raise UploadError("file", f"{handle} does not exist")
        size = handle.stat().st_size
    else:
        data = source.read(limits.max_bytes + 1)
        size = len(data)
        handle = io.BytesIO(data)
    if size > limits.max_bytes:
        raise UploadError("file", f"over the limit of {limits.max_bytes} bytes")
    if not zipfile.is_zipfile(handle):
        raise UploadError("file", "not a .npz archive (numpy.savez writes one)")
    return handle


def read_npz(
    source: str | Path | bytes | BinaryIO, limits: UploadLimits | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an uploaded .npz, after the container checks (size, members, no pickles)."""
    limits = limits or UploadLimits()
    handle = _open_npz(source, limits)
    try:
        with zipfile.ZipFile(handle) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise UploadError("file", f"a damaged archive ({exc})") from None
    total = sum(i.file_size for i in infos)
    if total > limits.max_uncompressed_bytes:
        raise UploadError(
            "file", f"arrays of {total} bytes uncompressed; at most {limits.max_uncompressed_bytes}"
        )
    for info in infos:
        key = info.filename.removesuffix(".npy")
        if not info.filename.endswith(".npy") or key not in ALLOWED_ARRAYS:
            raise UploadError(key, f"unexpected array; allowed: {', '.join(ALLOWED_ARRAYS)}")
    if isinstance(handle, io.BytesIO):
        handle.seek(0)
    arrays: dict[str, np.ndarray] = {}
    try:
        npz = np.load(handle, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UploadError("file", f"unreadable ({exc})") from None
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                    raise UploadError(key, "object arrays are refused (they need pickle)") from None
                raise UploadError(key, f"unreadable ({exc})") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise UploadError(key, f"unreadable ({exc})") from None
    return arrays


def dataset_from_arrays(
    arrays: dict[str, np.ndarray],
    name: str,
    limits: UploadLimits,
    val_fraction: float,
    test_fraction: float,
    source: str,
) -> Dataset:
    """Validate and split: without x_test, a fixed stratified `test_fraction` becomes the test
    set."""
    arrays, names = validate_arrays(arrays, limits)
    x, y = arrays["x"], arrays["y"].astype(np.int64)
    if "x_test" in arrays:
        x_test, y_test = arrays["x_test"], arrays["y_test"].astype(np.int64)
    else:
        keep, held = stratified_split(y, test_fraction)
        x, y, x_test, y_test = x[keep], y[keep], x[held], y[held]
    shape = (1, *x.shape[1:]) if x.ndim == 3 else tuple(x.shape[1:])
    info = DatasetInfo(
        name=name,
        title=name,
        input_shape=shape,
        num_classes=len(names),
        class_names=names,
        train_size=len(x),
        test_size=len(x_test),
        source=source,
        licence="the uploader's",
        description="a user data set",
        available=True,
    )
    dataset = build_dataset(
        info, {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test}, val_fraction
    )
    # Each split is a fraction of each class, rounded: a tiny set can leave one empty, which
    # training could not use (it chooses the epoch on validation and reports on test).
    splits = {"training": dataset.y_train, "validation": dataset.y_val, "test": dataset.y_test}
    if empty := [split for split, labels in splits.items() if len(labels) == 0]:
        raise UploadError(
            "y",
            f"{len(arrays['y'])} images in x leave the {' and '.join(empty)} split empty (each "
            f"takes a share of every class, rounded: validation {val_fraction:.0%}"
            + ("" if "x_test" in arrays else f", test {test_fraction:.0%}")
            + "); send more images per class",
        )
    return dataset


def load_npz(
    source: str | Path | bytes | BinaryIO,
    name: str = "upload",
    limits: UploadLimits | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> Dataset:
    """A user's .npz (see the module docstring) as a Dataset; `UploadError` when refused."""
    limits = limits or UploadLimits()
    return dataset_from_arrays(
        read_npz(source, limits), name, limits, val_fraction, test_fraction, "uploaded .npz"
    )


def read_image_folder(
    path: str | Path, image_size: tuple[int, int] | None = None, limits: UploadLimits | None = None
) -> dict[str, np.ndarray]:
    """Arrays {x uint8 (N, C, H, W), y, classes} from `path/<class>/<image>`: classes sorted by
    folder name, grey images stay grey unless some image has colour (then all are RGB). Images
    must share one size unless `image_size` (H, W) is given, which resizes them all."""
    limits = limits or UploadLimits()
    root = Path(path)
    if not root.is_dir():
        raise UploadError(str(root), "not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UploadError(str(root), "needs one sub-folder per class, at least 2")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        members = sorted(
            p for p in (root / cls).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not members:
            raise UploadError(cls, "the class folder holds no images")
        files.extend((p, label) for p in members)
    if len(files) > limits.max_samples:
        raise UploadError(str(root), f"{len(files)} images; at most {limits.max_samples}")
    images: list[Image.Image] = []
    for p, _ in files:
        rel = str(p.relative_to(root))
        try:
            with Image.open(p) as im:
                if im.width * im.height > max(limits.max_image_pixels, 4096 * 4096):
                    raise UploadError(rel, f"{im.width}x{im.height} is too large")
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise UploadError(rel, f"not a readable image ({exc})") from None
    grey = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in images)
    mode = "L" if grey else "RGB"
    size = (image_size[1], image_size[0]) if image_size else images[0].size
    arrays = []
    for (p, _), im in zip(files, images, strict=True):
        if im.size != size:
            if image_size is None:
                raise UploadError(
                    str(p.relative_to(root)),
                    f"{im.width}x{im.height}, but the first image is "
                    f"{size[0]}x{size[1]}; give an image size to resize",
                )
            im = im.resize(size, Image.Resampling.BILINEAR)
        a = np.asarray(im.convert(mode), dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return {
        "x": np.stack(arrays),
        "y": np.array([label for _, label in files], dtype=np.int64),
        "classes": np.array(classes),
    }


def load_image_folder(
    path: str | Path,
    name: str | None = None,
    image_size: tuple[int, int] | None = None,
    limits: UploadLimits | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> Dataset:
    """A folder of images, one sub-folder per class, as a Dataset (same checks as .npz)."""
    limits = limits or UploadLimits()
    arrays = read_image_folder(path, image_size, limits)
    return dataset_from_arrays(
        arrays, name or Path(path).name, limits, val_fraction, test_fraction, f"image folder {path}"
    )
