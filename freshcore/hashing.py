"""Platform-independent hashing of virtual weight indices to shared buckets.

Every virtual weight (a filter coefficient or a matrix entry) with flat index ``i`` in a layer
with seed ``s`` gets a bucket and a sign from one 64-bit hash. The arithmetic is numpy uint64
(wrap-around multiplication, logical shifts), so the values are the same on every platform, torch
version and device; a model file stores only the seed and regenerates the indices on load.

The hash is the splitmix64 finaliser of ``i * GOLDEN + key(s)``. The bucket is the high 32 bits
reduced to ``[0, n)`` by a multiply-shift (Lemire), the sign is the lowest bit: two disjoint bit
fields of a well-mixed 64-bit value: an independent bucket hash and sign hash for the cost of one.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64 finaliser of one Python int (for seeds and keys)."""
    z = x & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def derive_seed(seed: int, *path: int) -> int:
    """A child seed from a parent seed and a path of small integers (e.g. a layer index)."""
    z = mix64(seed ^ 0x5EED)
    for p in path:
        z = mix64(z ^ ((p + 1) * _GOLDEN & _MASK))
    return z & 0x7FFFFFFFFFFFFFFF  # fits in a signed int64 / JSON number


def hash64(seed: int, index: np.ndarray) -> np.ndarray:
    """The raw 64-bit hash of each index (uint64 array), computed in place where possible."""
    key = np.uint64(mix64(seed ^ 0xF2E5_4A17))
    z = np.asarray(index, dtype=np.uint64) * np.uint64(_GOLDEN)
    z += key
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def reduce_range(h: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Map 64-bit hashes to ``[0, n)`` with the high 32 bits (``n`` may vary per entry, < 2**32)."""
    return ((h >> np.uint64(32)) * np.asarray(n, dtype=np.uint64)) >> np.uint64(32)


def bucket_and_sign(
    seed: int, count: int, buckets: int | np.ndarray, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Buckets (int64 in ``[0, buckets)``) and signs (int8, +-1) of ``start .. start+count-1``."""
    if np.any(np.asarray(buckets) < 1):
        raise ValueError("bucket count must be at least 1")
    if np.any(np.asarray(buckets) >= 2**32):
        raise ValueError("bucket count must be below 2**32")
    h = hash64(seed, np.arange(start, start + count, dtype=np.uint64))
    bucket = reduce_range(h, buckets).astype(np.int64)
    sign = (h & np.uint64(1)).astype(np.int8)
    sign *= 2
    sign -= 1
    return bucket, sign


def signed_bucket_index(seed: int, count: int, buckets: int, chunk: int = 1 << 14) -> np.ndarray:
    """Index into the table ``[w, -w]`` of entries ``0 .. count-1``: bucket (+), K + bucket (-).

    Equal to combining :func:`bucket_and_sign` (sign +1 -> bucket, -1 -> K + bucket), computed in
    cache-sized chunks with preallocated buffers: about twice as fast for the millions of entries
    of a large fc layer, which a cold model load hashes.
    """
    if not 1 <= buckets < 2**32:
        raise ValueError(f"bucket count must be in [1, 2**32), got {buckets}")
    out = np.empty(count, dtype=np.uint64)  # hashed in place, chunk by chunk
    u = np.uint64
    k = u(buckets)
    key = mix64(seed ^ 0xF2E5_4A17)
    steps = np.arange(min(chunk, count), dtype=np.uint64) * u(_GOLDEN)
    t = np.empty(len(steps), dtype=np.uint64)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        zz, tt = out[start : start + n], t[:n]
        np.add(steps[:n], u((start * _GOLDEN + key) & _MASK), out=zz)
        for shift, mult in ((30, _M1), (27, _M2)):
            np.right_shift(zz, u(shift), out=tt)
            np.bitwise_xor(zz, tt, out=zz)
            np.multiply(zz, u(mult), out=zz)
        np.right_shift(zz, u(31), out=tt)
        np.bitwise_xor(zz, tt, out=zz)
        np.bitwise_and(zz, u(1), out=tt)  # sign bit: 1 -> +1 (offset 0), 0 -> -1 (offset K)
        np.subtract(u(1), tt, out=tt)
        np.multiply(tt, k, out=tt)
        np.right_shift(zz, u(32), out=zz)
        np.multiply(zz, k, out=zz)
        np.right_shift(zz, u(32), out=zz)
        np.add(zz, tt, out=zz)
    return out.view(np.int64)
