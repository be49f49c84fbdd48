"""User uploads: good archives load, every malformed one is refused naming the array at fault."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freshcore.data import UploadError, UploadLimits, load_image_folder, load_npz, read_npz

FIXTURE = Path(__file__).parent / "fixtures" / "mnist-500.npz"
RNG = np.random.default_rng(0)


def good(n: int = 40, shape: tuple[int, ...] = (8, 8), k: int = 4) -> dict[str, np.ndarray]:
    return {
        "x": RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8),
        "y": np.arange(n) % k,
    }


def test_fixture_is_a_valid_upload():
    ds = load_npz(FIXTURE, name="mnist-500")
    assert ds.info.input_shape == (1, 28, 28)
    assert ds.info.class_names == [str(i) for i in range(10)]
    total = len(ds.x_train) + len(ds.x_val) + len(ds.x_test)
    assert total == 500
    # No test arrays: a stratified 20 % became the test set, 10 % of the rest validation.
    assert len(ds.x_test) == pytest.approx(100, abs=5)
    assert ds.x_train.dtype == torch.float32 and ds.x_train.max() <= 1.0
    assert 0.1 < ds.mean[0] < 0.16


def test_uint8_channels_and_test_split(make_npz):
    arrays = good(60, (3, 8, 8), 3)
    arrays["x_test"] = RNG.integers(0, 256, size=(9, 3, 8, 8), dtype=np.uint8)
    arrays["y_test"] = np.array([0, 1, 2] * 3)
    arrays["classes"] = np.array(["cat", "dog", "émeu"])
    ds = load_npz(make_npz(**arrays), name="pets")
    assert ds.info.input_shape == (3, 8, 8)
    assert ds.info.class_names == ["cat", "dog", "émeu"]
    assert len(ds.x_test) == 9 and len(ds.x_train) + len(ds.x_val) == 60
    assert len(ds.mean) == 3 and len(ds.std) == 3
    # uint8 is scaled by 1/255 exactly.
    expected = torch.from_numpy(arrays["x_test"][0].astype(np.float32) / 255)
    assert torch.equal(ds.x_test[0], expected)


def test_float32_in_unit_range_is_kept(make_npz):
    x = RNG.random((30, 8, 8), dtype=np.float32)
    ds = load_npz(make_npz(x=x, y=np.arange(30) % 3))
    assert ds.info.num_classes == 3
    got = torch.cat([ds.x_train, ds.x_val, ds.x_test]).flatten().sort().values
    assert torch.equal(got, torch.from_numpy(x).flatten().sort().values)


def test_load_is_deterministic(make_npz):
    data = make_npz(**good(50))
    a, b = load_npz(data), load_npz(data)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)


def with_(base: dict, **changes) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


BASE = good(40)
X_TEST = RNG.integers(0, 256, size=(8, 8, 8), dtype=np.uint8)

MALFORMED = [
    ("missing x", with_(BASE, x=None), "x", "missing"),
    ("missing y", with_(BASE, y=None), "y", "missing"),
    ("unknown array", with_(BASE, labels=BASE["y"]), "labels", "unexpected array"),
    ("x float64", with_(BASE, x=BASE["x"].astype(np.float64)), "x", "dtype float64"),
    ("x int32", with_(BASE, x=BASE["x"].astype(np.int32)), "x", "dtype int32"),
    ("x 2-D", with_(BASE, x=BASE["x"].reshape(40, 64)), "x", "must be (N, H, W)"),
    ("x 5-D", with_(BASE, x=BASE["x"].reshape(40, 1, 1, 8, 8)), "x", "must be (N, H, W)"),
    ("channels last", with_(BASE, x=np.zeros((40, 8, 8, 3), np.uint8)), "x", "channels-last"),
    ("empty x", {"x": np.zeros((0, 8, 8), np.uint8), "y": np.zeros(0, np.int64)}, "x", "no images"),
    ("tiny images", with_(BASE, x=np.zeros((40, 2, 2), np.uint8)), "x", "smaller than"),
    ("huge images", with_(BASE, x=np.zeros((40, 300, 300), np.uint8)), "x", "more than"),
    ("too many channels", with_(BASE, x=np.zeros((40, 7, 8, 8), np.uint8)), "x", "channels"),
    (
        "NaN",
        with_(
            BASE,
            x=np.where(np.arange(40)[:, None, None] == 5, np.nan, 0.5).astype(np.float32)
            * np.ones((1, 8, 8), np.float32),
        ),
        "x",
        "NaN or infinite values (first in image 5)",
    ),
    ("inf", with_(BASE, x=np.full((40, 8, 8), np.inf, np.float32)), "x", "NaN or infinite"),
    (
        "float over 1",
        with_(BASE, x=np.full((40, 8, 8), 255.0, np.float32)),
        "x",
        "must lie in [0, 1]",
    ),
    (
        "float under 0",
        with_(BASE, x=np.full((40, 8, 8), -0.5, np.float32)),
        "x",
        "must lie in [0, 1]",
    ),
    ("y float", with_(BASE, y=BASE["y"].astype(np.float32)), "y", "must be integers"),
    ("y bool", with_(BASE, y=BASE["y"] > 1), "y", "must be integers"),
    ("y 2-D", with_(BASE, y=BASE["y"].reshape(40, 1)), "y", "must be (N,)"),
    ("y too short", with_(BASE, y=BASE["y"][:30]), "y", "30 labels for 40 images"),
    (
        "negative label",
        with_(BASE, y=np.where(np.arange(40) == 3, -1, BASE["y"])),
        "y",
        "label -1 is out of range",
    ),
    (
        "label over classes",
        with_(BASE, classes=np.array(["a", "b", "c"])),
        "y",
        "label 3 is out of range for 3 classes",
    ),
    ("class absent", with_(BASE, y=BASE["y"] * 2), "y", "no training image of class 1"),
    ("one class", with_(BASE, y=np.zeros(40, np.int64)), "y", "at least 2 classes"),
    ("classes not strings", with_(BASE, classes=np.arange(4)), "classes", "1-D array of strings"),
    ("classes repeat", with_(BASE, classes=np.array(["a", "b", "a", "c"])), "classes", "repeat"),
    ("empty class name", with_(BASE, classes=np.array(["a", "b", " ", "c"])), "classes", "empty"),
    ("x_test alone", with_(BASE, x_test=X_TEST), "y_test", "missing (x_test was given"),
    ("y_test alone", with_(BASE, y_test=np.arange(8) % 4), "x_test", "missing (y_test was given"),
    (
        "x_test shape",
        with_(BASE, x_test=np.zeros((8, 9, 9), np.uint8), y_test=np.arange(8) % 4),
        "x_test",
        "images shaped (9, 9), but x has (8, 8)",
    ),
    (
        "x_test dtype",
        with_(BASE, x_test=np.zeros((8, 8, 8), np.float32), y_test=np.arange(8) % 4),
        "x_test",
        "differs from x's uint8",
    ),
    (
        "y_test length",
        with_(BASE, x_test=X_TEST, y_test=np.arange(5) % 4),
        "y_test",
        "5 labels for 8 images in x_test",
    ),
    (
        "y_test range",
        with_(BASE, x_test=X_TEST, y_test=np.arange(8) % 4 + 3),
        "y_test",
        "label 6 is out of range for 4 classes",
    ),
]


@pytest.mark.parametrize(
    ("case", "arrays", "array", "fragment"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_uploads_are_refused(make_npz, case, arrays, array, fragment):
    with pytest.raises(UploadError) as info:
        load_npz(make_npz(**arrays))
    assert info.value.array == array
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"{array}: ")


def test_limits_are_enforced(make_npz):
    data = make_npz(**good(40))
    with pytest.raises(UploadError, match="over the limit of 100 bytes") as info:
        load_npz(data, limits=UploadLimits(max_bytes=100))
    assert info.value.array == "file"
    with pytest.raises(UploadError, match="40 images in all; at most 39"):
        load_npz(data, limits=UploadLimits(max_samples=39))
    with pytest.raises(UploadError, match="4 classes; at most 3"):
        load_npz(data, limits=UploadLimits(max_classes=3))
    with pytest.raises(UploadError, match="more than 63 pixels"):
        load_npz(data, limits=UploadLimits(max_image_pixels=63))


def test_compressed_bomb_is_refused_before_reading():
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((4000, 64, 64), np.uint8), y=np.arange(4000) % 2)
    data = buffer.getvalue()
    assert len(data) < 100_000  # small on the wire, 16 MB once read
    with pytest.raises(UploadError, match="uncompressed; at most") as info:
        read_npz(data, UploadLimits(max_uncompressed_bytes=1_000_000))
    assert info.value.array == "file"


def test_pickled_object_array_is_refused(make_npz):
    data = make_npz(x=good()["x"], y=good()["y"], classes=np.array(["a", None, 3, 4], dtype=object))
    with pytest.raises(UploadError, match="object arrays are refused") as info:
        load_npz(data)
    assert info.value.array == "classes"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not a zip at all", "not a .npz archive"),
        (b"\x93NUMPY" + b"\x00" * 100, "not a .npz archive"),
    ],
)
def test_non_archives_are_refused(data, fragment):
    with pytest.raises(UploadError, match=fragment) as info:
        load_npz(data)
    assert info.value.array == "file"


def test_foreign_zip_member_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("x.npy", b"")
        zf.writestr("evil.txt", b"hello")
    with pytest.raises(UploadError, match="unexpected array") as info:
        load_npz(buffer.getvalue())
    assert info.value.array == "evil.txt"


def test_damaged_member_is_refused(make_npz):
    data = bytearray(make_npz(**good(40)))
    start = data.index(b"\x93NUMPY")
    data[start : start + 6] = b"XXXXXX"  # corrupt the first array's header
    with pytest.raises(UploadError, match="unreadable"):
        load_npz(bytes(data))


def test_upload_from_path_and_file_object(tmp_path, make_npz):
    path = tmp_path / "mine.npz"
    path.write_bytes(make_npz(**good(40)))
    assert load_npz(path).info.num_classes == 4
    with open(path, "rb") as f:
        assert load_npz(f).info.num_classes == 4
    with pytest.raises(UploadError, match="does not exist"):
        load_npz(tmp_path / "absent.npz")


# --------------------------------------------------------------------- image folders


def write_folder(root: Path, classes: dict[str, int], size=(10, 12), mode="L") -> None:
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            pixels = RNG.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / cls / f"{i}.png")


def test_image_folder_grey(tmp_path):
    write_folder(tmp_path, {"cats": 10, "dogs": 10, "owls": 10})
    ds = load_image_folder(tmp_path, name="pets")
    assert ds.info.class_names == ["cats", "dogs", "owls"]
    assert ds.info.input_shape == (1, 12, 10)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 30


def test_image_folder_colour_and_resize(tmp_path):
    write_folder(tmp_path / "a", {"x": 8, "y": 8}, mode="RGB")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a" / "x" / "odd.png")
    with pytest.raises(UploadError, match="20x20, but the first image is 10x12") as info:
        load_image_folder(tmp_path / "a")
    assert info.value.array == str(Path("x") / "odd.png")
    ds = load_image_folder(tmp_path / "a", image_size=(16, 16))
    assert ds.info.input_shape == (3, 16, 16)  # one colour image makes them all RGB


def test_too_few_images_for_a_split_are_refused(make_npz, tmp_path):
    """Each split takes a rounded share of every class; a set so small that one comes out
    empty is refused at upload, naming it, rather than failing its job's training later."""
    with pytest.raises(UploadError, match="12 images in x leave the validation split") as e:
        load_npz(make_npz(**good(12, k=2)))  # 6 per class: 1 to test, round(0.5) to validation
    assert e.value.array == "y" and "validation 10%, test 20%" in str(e.value)
    assert len(load_npz(make_npz(**good(14, k=2))).x_val) == 2  # 7 per class: one each
    arrays = good(4, k=2)
    arrays["x_test"], arrays["y_test"] = arrays["x"], arrays["y"]
    with pytest.raises(UploadError, match=r"the validation split empty .*validation 10%\)"):
        load_npz(make_npz(**arrays))
    write_folder(tmp_path / "tiny", {"a": 3, "b": 3})
    with pytest.raises(UploadError, match="validation split empty"):
        load_image_folder(tmp_path / "tiny")


def test_image_folder_errors(tmp_path):
    write_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(UploadError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "one")
    write_folder(tmp_path / "bad", {"a": 3, "b": 3})
    (tmp_path / "bad" / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UploadError, match="not a readable image") as info:
        load_image_folder(tmp_path / "bad")
    assert info.value.array == str(Path("b") / "broken.png")
    write_folder(tmp_path / "empty", {"a": 3})
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(UploadError, match="holds no images") as info:
        load_image_folder(tmp_path / "empty")
    assert info.value.array == "b"
