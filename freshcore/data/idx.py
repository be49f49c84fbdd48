"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.): a magic number, the dimensions,
then the raw array, big-endian."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(ValueError):
    """The bytes are not a well-formed IDX file."""


def parse_idx(data: bytes) -> np.ndarray:
    """Decode IDX bytes (gzip-compressed or not) into an array, checking the header against the
    size so a truncated file is refused rather than silently reshaped."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxError("not an IDX file: bad magic number")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise IdxError(f"not an IDX file: unknown element type 0x{code:02x}")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise IdxError("IDX header truncated")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise IdxError(f"IDX size mismatch: header says {expected} bytes, file has {len(data)}")
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    return parse_idx(Path(path).read_bytes())


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (for tests and for building local folders)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()
