"""Orthonormal DCT-II matrices: a filter slice W is held as coefficients V with W = D_h^T V D_w."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch


@functools.lru_cache(maxsize=64)
def _dct_matrix_np(n: int) -> np.ndarray:
    j = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(math.pi * (2 * i + 1) * j / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    d.setflags(write=False)
    return d


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The n x n orthonormal DCT-II matrix D (row j = frequency j): coefficients = D @ signal."""
    if n < 1:
        raise ValueError(f"DCT size must be positive, got {n}")
    return torch.tensor(_dct_matrix_np(n), dtype=dtype)


def idct2_matrix(kh: int, kw: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """M with vec(W) = vec(V) @ M for W = D_h^T V D_w, flattened row-major (M = D_h kron D_w)."""
    return torch.kron(dct_matrix(kh, dtype), dct_matrix(kw, dtype))


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dimensions (V = D_h W D_w^T)."""
    dh = dct_matrix(x.shape[-2], x.dtype).to(x.device)
    dw = dct_matrix(x.shape[-1], x.dtype).to(x.device)
    return dh @ x @ dw.T


def idct2(v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2` (W = D_h^T V D_w)."""
    dh = dct_matrix(v.shape[-2], v.dtype).to(v.device)
    dw = dct_matrix(v.shape[-1], v.dtype).to(v.device)
    return dh.T @ v @ dw


def band_of(kh: int, kw: int) -> np.ndarray:
    """Band b = j1 + j2 of each coefficient of a kh x kw slice, flattened row-major."""
    return (np.arange(kh)[:, None] + np.arange(kw)[None, :]).reshape(-1)
