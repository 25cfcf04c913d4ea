"""Numba kernels for norm.py: rms_norm and Cohere's layer_norm.

Idea. One row of x is normalised by one vectorised pass for the statistics and
one for the output. No threads: even a 512-token prefill normalises in well
under a millisecond, less than a thread launch costs on a busy machine.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .numba_math import FASTMATH


@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def rms_norm_row(x, weight, eps, out):
    """x [D] -> out [D] = weight * x / sqrt(mean(x^2) + eps)."""
    sum_sq = np.float32(0.0)
    for i in range(x.size):
        sum_sq += x[i] * x[i]
    inv = np.float32(1.0) / np.sqrt(sum_sq / np.float32(x.size) + eps)
    for i in range(x.size):
        out[i] = weight[i] * (x[i] * inv)


@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def layer_norm_row(x, weight, eps, out):
    """x [D] -> out [D] = weight * (x - mean) / sqrt(var + eps), biased variance, no bias."""
    total = np.float32(0.0)
    for i in range(x.size):
        total += x[i]
    mean = total / np.float32(x.size)
    sum_sq = np.float32(0.0)
    for i in range(x.size):
        sum_sq += (x[i] - mean) * (x[i] - mean)
    inv = np.float32(1.0) / np.sqrt(sum_sq / np.float32(x.size) + eps)
    for i in range(x.size):
        out[i] = weight[i] * ((x[i] - mean) * inv)


@njit(error_model="numpy", cache=True)
def rms_norm_rows(x, weight, eps, out):
    """x [N, D], weight [D] -> out [N, D]."""
    for n in range(x.shape[0]):
        rms_norm_row(x[n], weight, eps, out[n])


@njit(error_model="numpy", cache=True)
def layer_norm_rows(x, weight, eps, out):
    """x [N, D], weight [R, D] (row n uses weight[n % R]: qk-norm has one row per head) -> out [N, D]."""
    for n in range(x.shape[0]):
        layer_norm_row(x[n], weight[n % weight.shape[0]], eps, out[n])


def _rows(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x.reshape(-1, x.shape[-1])                                   # [N, D]


def rms_norm(x, weight, eps):
    """x [..., D] -> [..., D] (same signature as norm.rms_norm)."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    rms_norm_rows(x2, weight, np.float32(eps), out)
    return out.reshape(x.shape)


def layer_norm(x, weight, eps):
    """x [..., D], weight [D] or [H, HD] (qk-norm on x [B, T, H, HD]) -> [..., D]."""
    x2 = _rows(x)
    w2 = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1, x.shape[-1])  # [R, D]
    out = np.empty_like(x2)
    layer_norm_rows(x2, w2, np.float32(eps), out)
    return out.reshape(x.shape)
