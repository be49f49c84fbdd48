"""Turn a predict request's samples into the float batch a FreshModel takes: (N, C, H, W) in [0, 1].

Normalisation (mean/std) happens inside the model, so inputs only have to be scaled to [0, 1]:
- JSON `inputs`: nested lists shaped (C, H, W), (H, W) for one-channel models, or a batch
  (N, C, H, W) / (N, H, W). `scale` says what the numbers are: "unit" (the default) for floats in
  [0, 1], "byte" for 0..255 pixel values.
- base64 `inputs_b64`: raw little-endian float32 ("unit" scale) or uint8 ("byte" scale) with a
  `shape`, one of the shapes above.
- images (PNG, JPEG, WebP, BMP, GIF's first frame): converted to the model's channels (L or RGB,
  transparency composited over black, the MNIST convention) and resized to its (H, W) (bilinear,
  no aspect-ratio padding), then scaled by 1/255.
Every refusal is an `InputError` carrying the HTTP status and a message naming what is wrong.
"""

import base64
import binascii
import io
import math
import warnings
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

Scale = Literal["unit", "byte"]
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class InputError(ValueError):
    """A request whose samples cannot be used; `status` is the HTTP status to answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def expected_shapes(input_shape: tuple[int, int, int]) -> str:
    c, h, w = input_shape
    shapes = [f"({c}, {h}, {w})", f"a batch (N, {c}, {h}, {w})"]
    if c == 1:
        shapes[1:1] = [f"({h}, {w})", f"(N, {h}, {w})"]
    return ", ".join(shapes[:-1]) + " or " + shapes[-1]


def to_batch(
    array: np.ndarray, input_shape: tuple[int, int, int], max_batch: int, field: str = "inputs"
) -> np.ndarray:
    """Reshape one sample or a batch to (N, C, H, W), or say which shapes were expected."""
    c, h, w = input_shape
    shape = array.shape
    batch: np.ndarray | None = None
    if array.ndim == 4 and shape[1:] == (c, h, w):
        batch = array
    elif array.ndim == 3 and shape == (c, h, w):
        batch = array[None]
    elif array.ndim == 3 and c == 1 and shape[1:] == (h, w):
        batch = array[:, None]
    elif array.ndim == 2 and c == 1 and shape == (h, w):
        batch = array[None, None]
    if batch is None:
        raise InputError(
            field,
            f"wrong shape {_shape_str(shape)}; this model expects {expected_shapes(input_shape)}",
        )
    if batch.shape[0] == 0:
        raise InputError(field, "the batch is empty")
    if batch.shape[0] > max_batch:
        raise InputError(
            field,
            f"batch of {batch.shape[0]} samples is over the limit of {max_batch}"
            " (FRESHNETS_MAX_BATCH)",
            status=413,
        )
    return batch


def scale_to_unit(array: np.ndarray, scale: Scale, field: str = "inputs") -> torch.Tensor:
    """Check the value range for `scale` and return float32 values in [0, 1]."""
    values = array.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise InputError(field, "contains NaN or infinity")
    if values.size:
        low, high = float(values.min()), float(values.max())
        top = 1.0 if scale == "unit" else 255.0
        if low < 0.0 or high > top:
            hint = (
                '; for 0..255 pixel values send "scale": "byte"'
                if scale == "unit" and high <= 255
                else ""
            )
            raise InputError(
                field,
                f"values must lie in [0, {top:g}] for scale {scale!r}, got"
                f" [{low:g}, {high:g}]{hint}",
            )
    if scale == "byte":
        values = values * np.float32(1 / 255)
    if not values.flags.writeable:  # a view of the request's bytes
        values = values.copy()
    return torch.from_numpy(np.ascontiguousarray(values))


def from_lists(
    inputs: Any, scale: Scale, input_shape: tuple[int, int, int], max_batch: int
) -> torch.Tensor:
    """JSON nested lists of numbers."""
    try:
        array = np.asarray(inputs)
    except ValueError:
        raise InputError(
            "inputs", "nested lists of unequal lengths; every sample must have the same shape"
        ) from None
    if array.dtype.kind not in "iuf":
        what = {"b": "booleans", "U": "strings", "O": "nulls, objects or ragged lists"}.get(
            array.dtype.kind, f"values of type {array.dtype}"
        )
        raise InputError("inputs", f"must be numbers, found {what}")
    return scale_to_unit(to_batch(array, input_shape, max_batch), scale)


def from_base64(
    data: str,
    dtype: Literal["float32", "uint8"],
    shape: list[int],
    scale: Scale | None,
    input_shape: tuple[int, int, int],
    max_batch: int,
) -> torch.Tensor:
    """Raw little-endian float32 (scale "unit" unless told) or uint8 (scale "byte") bytes."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("inputs_b64", "not valid base64") from None
    if any(d < 0 for d in shape):
        raise InputError("shape", f"dimensions must not be negative, got {shape}")
    np_dtype = np.dtype("<f4") if dtype == "float32" else np.dtype("u1")
    expected = math.prod(shape) * np_dtype.itemsize
    if len(raw) != expected:
        raise InputError(
            "inputs_b64",
            f"{len(raw)} bytes do not match shape {shape} of {dtype} ({expected} bytes expected)",
        )
    array = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    batch = to_batch(array, input_shape, max_batch, field="shape")
    return scale_to_unit(batch, scale or ("unit" if dtype == "float32" else "byte"))


def decode_image(
    data: bytes, input_shape: tuple[int, int, int], max_pixels: int, name: str
) -> np.ndarray:
    """One image file -> uint8 (C, H, W) in the model's channels and size."""
    c, h, w = input_shape
    if c not in (1, 3):
        raise InputError(
            name, f"images can only feed 1- or 3-channel models; this one takes {c} channels"
        )
    try:
        with warnings.catch_warnings():
            # Our own limit below is the guard; Pillow's hard limit still raises its error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    name,
                    f"{width}x{height} = {width * height} pixels is over the limit of"
                    f" {max_pixels} (FRESHNETS_MAX_IMAGE_PIXELS)",
                    status=413,
                )
            image.load()
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(name, "too many pixels (decompression bomb guard)", 413) from None
    except UnidentifiedImageError:
        raise InputError(
            name, f"not a decodable image (accepted: {', '.join(IMAGE_FORMATS)})", 400
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(name, f"the image is corrupt or truncated ({exc})", 400) from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if c == 1 else "RGB")
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if c == 1 else pixels.transpose(2, 0, 1)


def from_images(
    files: list[tuple[str, bytes]],
    input_shape: tuple[int, int, int],
    max_pixels: int,
    max_batch: int,
) -> torch.Tensor:
    """Image files (name, bytes) -> one batch, in the order given."""
    if not files:
        raise InputError("images", "no image files in the multipart body")
    if len(files) > max_batch:
        raise InputError(
            "images",
            f"{len(files)} images are over the batch limit of {max_batch} (FRESHNETS_MAX_BATCH)",
            status=413,
        )
    batch = np.stack([decode_image(data, input_shape, max_pixels, name) for name, data in files])
    return scale_to_unit(batch, "byte", field="images")
