"""Every input form becomes the same (N, C, H, W) batch in [0, 1]; bad input names its fault."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.serving.inputs import InputError, from_base64, from_images, from_lists

GREY = (1, 8, 8)
RGB = (3, 8, 8)


def png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_lists_one_sample_and_batches_agree() -> None:
    rng = np.random.default_rng(0)
    batch = rng.random((3, 1, 8, 8)).astype(np.float32)
    expected = torch.from_numpy(batch)
    assert torch.equal(from_lists(batch.tolist(), "unit", GREY, 16), expected)
    assert torch.equal(from_lists(batch[:, 0].tolist(), "unit", GREY, 16), expected)
    assert torch.equal(from_lists(batch[0].tolist(), "unit", GREY, 16), expected[:1])
    assert torch.equal(from_lists(batch[0, 0].tolist(), "unit", GREY, 16), expected[:1])


def test_byte_scale_divides_by_255() -> None:
    x = from_lists([[255] * 8] * 8, "byte", GREY, 4)
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([[0.5] * 8] * 7, "wrong shape (7, 8); this model expects (1, 8, 8), (8, 8), (N, 8, 8)"),
        ([[[0.5] * 8] * 8] * 2 + [[[0.5] * 8] * 7], "unequal lengths"),
        ([["a"] * 8] * 8, "must be numbers, found strings"),
        ([[True] * 8] * 8, "must be numbers, found booleans"),
        ([[None] * 8] * 8, "must be numbers"),
        ([[float("nan")] * 8] * 8, "NaN or infinity"),
        ([[2.0] * 8] * 8, "values must lie in [0, 1]"),
        ([[200] * 8] * 8, 'send "scale": "byte"'),
        ([], "wrong shape (0,)"),
    ],
)
def test_bad_lists_are_422_naming_the_fault(inputs: list, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        from_lists(inputs, "unit", GREY, 16)
    assert caught.value.status == 422
    assert fragment in str(caught.value)


def test_batch_over_the_limit_is_413() -> None:
    with pytest.raises(InputError) as caught:
        from_lists(np.zeros((5, 8, 8)).tolist(), "unit", GREY, 4)
    assert caught.value.status == 413 and "over the limit of 4" in str(caught.value)


def test_rgb_model_refuses_a_grey_sample_saying_what_it_expects() -> None:
    with pytest.raises(InputError, match=r"expects \(3, 8, 8\) or a batch \(N, 3, 8, 8\)"):
        from_lists(np.zeros((8, 8)).tolist(), "unit", RGB, 4)


def test_base64_float32_and_uint8() -> None:
    rng = np.random.default_rng(1)
    floats = rng.random((2, 1, 8, 8)).astype("<f4")
    x = from_base64(
        base64.b64encode(floats.tobytes()).decode(), "float32", [2, 1, 8, 8], None, GREY, 8
    )
    assert torch.equal(x, torch.from_numpy(floats))
    pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    x = from_base64(base64.b64encode(pixels.tobytes()).decode(), "uint8", [8, 8], None, GREY, 8)
    assert torch.allclose(x[0, 0], torch.from_numpy(pixels.astype(np.float32) / 255))


@pytest.mark.parametrize(
    ("data", "dtype", "shape", "fragment"),
    [
        ("not base64!", "uint8", [8, 8], "not valid base64"),
        (base64.b64encode(bytes(63)).decode(), "uint8", [8, 8], "63 bytes do not match"),
        (base64.b64encode(bytes(64)).decode(), "uint8", [4, 16], "wrong shape (4, 16)"),
        (base64.b64encode(np.full(64, np.nan, "<f4").tobytes()).decode(), "float32", [8, 8], "NaN"),
    ],
)
def test_bad_base64(data: str, dtype: str, shape: list[int], fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        from_base64(data, dtype, shape, None, GREY, 8)  # type: ignore[arg-type]
    assert fragment in str(caught.value) and caught.value.status == 422


def test_images_convert_channels_and_size() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 0] = 255  # pure red, twice the size
    x = from_images([("a.png", png(grey)), ("b.png", png(colour))], GREY, 10_000, 8)
    assert x.shape == (2, 1, 8, 8)
    assert torch.allclose(x[0, 0], torch.from_numpy(grey.astype(np.float32) / 255))
    # ITU-R 601 luma of pure red: 299/1000 of full scale.
    assert torch.allclose(x[1], torch.full((1, 8, 8), 76 / 255), atol=1 / 255)
    x = from_images([("g.jpg", png(grey, fmt="JPEG"))], RGB, 10_000, 8)
    assert x.shape == (1, 3, 8, 8) and torch.allclose(x[0, 0], x[0, 2])


def test_transparency_is_composited_over_black() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white but fully transparent...
    rgba[0, 0, 3] = 255  # ...except one opaque pixel
    x = from_images([("t.png", png(rgba, "RGBA"))], GREY, 10_000, 8)
    assert x[0, 0, 0, 0] == 1.0 and x[0, 0].sum() == 1.0


NOISE_PNG = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (b"definitely not an image", 400, "not a decodable image"),
        (NOISE_PNG[: len(NOISE_PNG) // 2], 400, "corrupt or truncated"),
        (png(np.zeros((101, 100), np.uint8)), 413, "10100 pixels is over the limit of 10000"),
    ],
)
def test_bad_images(data: bytes, status: int, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        from_images([("x.png", data)], GREY, 10_000, 8)
    assert caught.value.status == status and fragment in str(caught.value)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    """A tiny file that claims 20000 x 20000 pixels: refused from its header."""
    bomb = png(np.zeros((1, 1), np.uint8))
    # Rewrite the IHDR width/height (and its CRC) to claim a huge image.
    import struct
    import zlib

    ihdr = bytearray(bomb[8:33])
    ihdr[8:16] = struct.pack(">II", 20000, 20000)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    bomb = bomb[:8] + bytes(ihdr) + bomb[33:]
    assert len(bomb) < 100
    with pytest.raises(InputError) as caught:
        from_images([("bomb.png", bomb)], GREY, 4096 * 4096, 8)
    assert caught.value.status == 413 and "pixels" in str(caught.value)


def test_too_many_images_and_none() -> None:
    one = png(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError) as caught:
        from_images([("x.png", one)] * 3, GREY, 10_000, 2)
    assert caught.value.status == 413
    with pytest.raises(InputError, match="no image files"):
        from_images([], GREY, 10_000, 2)
