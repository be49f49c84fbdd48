import numpy as np
import pytest
import scipy.fft
import torch

from freshcore.dct import band_of, dct2, dct_matrix, idct2, idct2_matrix


@pytest.mark.parametrize("shape", [(5, 5), (3, 3), (1, 1), (3, 7), (2, 4, 5, 5)])
def test_dct_matches_scipy(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    want = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    got = dct2(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    back = idct2(torch.from_numpy(want)).numpy()
    np.testing.assert_allclose(
        back, scipy.fft.idctn(want, type=2, norm="ortho", axes=(-2, -1)), atol=1e-12
    )
    np.testing.assert_allclose(back, x, atol=1e-12)


def test_matrix_orthonormal():
    for n in (1, 2, 5, 11):
        d = dct_matrix(n)
        torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=torch.float64))


def test_kron_form_matches_inverse():
    v = torch.randn(6, 3, 5, dtype=torch.float64)
    w = (v.reshape(6, 15) @ idct2_matrix(3, 5)).reshape(6, 3, 5)
    torch.testing.assert_close(w, idct2(v))


def test_bands():
    assert band_of(3, 3).tolist() == [0, 1, 2, 1, 2, 3, 2, 3, 4]
    assert np.bincount(band_of(5, 5)).tolist() == [1, 2, 3, 4, 5, 4, 3, 2, 1]
