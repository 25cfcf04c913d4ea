"""Numba kernels for sampling.py: argmax and the top-k / top-p filters, one row per thread.

Same semantics as the NumPy functions they mirror (transformers' processors):
argmax takes the first index on ties (and the first NaN, like np.argmax);
top-k keeps every score >= the k-th largest; top-p sorts ascending, and drops
the low tail whose cumulative softmax is <= 1 - p, always keeping min_keep.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(error_model="numpy", cache=True)
def argmax_rows(scores, out):
    """scores [B, V] -> out [B] int64 (one pass per row: cheaper than a thread launch)."""
    for b in range(scores.shape[0]):
        row = scores[b]
        best, best_i = row[0], 0
        for i in range(row.size):
            if np.isnan(row[i]):
                best_i = i
                break
            if row[i] > best:
                best, best_i = row[i], i
        out[b] = best_i


def argmax(scores):
    """[B, V] -> [B] int64, the first index on ties."""
    scores = np.ascontiguousarray(scores)
    out = np.empty(scores.shape[0], dtype=np.int64)
    argmax_rows(scores, out)
    return out


@njit(error_model="numpy", parallel=True, cache=True)
def top_k_rows(scores, k, out):
    """Scores below the k-th largest of their row -> -inf."""
    for b in prange(scores.shape[0]):
        row = scores[b]
        kth = np.sort(row)[row.size - k]                      # k-th largest
        for i in range(row.size):
            out[b, i] = -np.inf if row[i] < kth else row[i]


def top_k_filter(scores, k, min_keep=1):
    """Same signature as sampling.top_k_filter: scores [B, V] -> [B, V]."""
    k = min(max(k, min_keep), scores.shape[-1])
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    out = np.empty_like(scores)
    top_k_rows(scores, k, out)
    return out


@njit(error_model="numpy", parallel=True, cache=True)
def top_p_rows(scores, threshold, min_keep, out):
    """Drop the ascending-sorted prefix whose cumulative softmax is <= threshold (= 1 - p)."""
    V = scores.shape[1]
    for b in prange(scores.shape[0]):
        row = scores[b]
        order = np.argsort(row, kind="mergesort")             # ascending, stable
        top = row[order[V - 1]]
        probs = np.empty(V, dtype=np.float32)
        total = np.float32(0.0)
        for j in range(V):
            probs[j] = np.exp(row[order[j]] - top)
            total += probs[j]
        cumulative = np.float32(0.0)
        for i in range(V):
            out[b, i] = row[i]
        for j in range(V - min_keep):                         # the top min_keep always stay
            cumulative += probs[j] / total
            if cumulative > threshold:
                break
            out[b, order[j]] = -np.inf


def top_p_filter(scores, p, min_keep=1):
    """Same signature as sampling.top_p_filter: scores [B, V] -> [B, V]."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    out = np.empty_like(scores)
    top_p_rows(scores, np.float32(1 - p), max(min_keep, 1), out)
    return out
