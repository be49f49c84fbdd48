import numpy as np
import pytest

from freshcore.hashing import bucket_and_sign, derive_seed, hash64, mix64, signed_bucket_index


def test_mix64_is_splitmix64():
    # reference outputs of splitmix64 seeded with 0 (Vigna's splitmix64.c)
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    assert mix64(2 * 0x9E3779B97F4A7C15 % 2**64) == 0x6E789E6AA1B965F4


def test_golden_values():
    assert hash64(0, np.arange(4)).tolist() == [
        18086470902461694240, 17644513626790510689, 8779034345054528348, 15556395338226496116,
    ]  # fmt: skip
    assert hash64(12345, np.array([0, 1, 2**40], dtype=np.uint64)).tolist() == [
        17524553888690905498, 7237113223830169197, 8379054994946637312,
    ]  # fmt: skip
    bucket, sign = bucket_and_sign(7, 10, 1000)
    assert bucket.tolist() == [231, 72, 698, 106, 684, 525, 824, 358, 834, 431]
    assert sign.tolist() == [1, 1, 1, -1, 1, -1, 1, 1, -1, 1]
    assert derive_seed(0, 0) == 7201113296707539525
    assert derive_seed(42, 1) == 3293166241557417931


def test_offset_ranges_agree_and_types():
    b_all, s_all = bucket_and_sign(3, 1000, 77)
    b_part, s_part = bucket_and_sign(3, 100, 77, start=500)
    assert np.array_equal(b_all[500:600], b_part) and np.array_equal(s_all[500:600], s_part)
    assert b_all.dtype == np.int64 and s_all.dtype == np.int8


def test_buckets_uniform_and_signs_balanced():
    n, k = 200_000, 100
    bucket, sign = bucket_and_sign(11, n, k)
    counts = np.bincount(bucket, minlength=k)
    assert bucket.min() >= 0 and bucket.max() < k
    expected = n / k
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 200  # 99 degrees of freedom: mean 99, p(chi2 > 200) ~ 1e-8
    assert abs(sign.mean()) < 0.01
    assert set(np.unique(sign).tolist()) == {-1, 1}
    # the sign does not depend on the bucket
    for b in range(5):
        assert abs(sign[bucket == b].mean()) < 0.1


def test_per_entry_bucket_counts_and_seeds_differ():
    n = np.array([1, 2, 3, 1000] * 250)
    bucket, _ = bucket_and_sign(5, n.size, n)
    assert (bucket < n).all()
    assert not np.array_equal(bucket_and_sign(1, 100, 50)[0], bucket_and_sign(2, 100, 50)[0])
    assert derive_seed(0, 1) != derive_seed(0, 2) != derive_seed(1, 1)


def test_rejects_bad_bucket_counts():
    with pytest.raises(ValueError):
        bucket_and_sign(0, 10, 0)
    with pytest.raises(ValueError):
        bucket_and_sign(0, 10, 2**32)


@pytest.mark.parametrize(
    ("count", "buckets", "chunk"), [(1, 1, 16), (1000, 7, 64), (70_000, 3000, 1 << 14)]
)
def test_chunked_signed_index_equals_bucket_and_sign(count, buckets, chunk):
    bucket, sign = bucket_and_sign(13, count, buckets)
    want = np.where(sign > 0, bucket, bucket + buckets)
    assert np.array_equal(signed_bucket_index(13, count, buckets, chunk=chunk), want)
