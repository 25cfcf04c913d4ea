"""Numba kernels for linear.py: linear (GEMV / matmul), embedding, scale_logits; bf16 weight storage.

Idea. Decoding one token is a chain of matrix-vector products: every weight
byte is read once and used for one multiply-add, so speed is memory bandwidth.
`gemv` splits the weight rows across the threads (prange), each row is one
contiguous dot product that LLVM vectorises, and x stays in L1. Halving the
bytes halves the time, hence the bfloat16 storage: a bf16 number is the upper
16 bits of a float32, kept as uint16 and widened in the kernel (shift left by
16, reinterpret) right before a float32 multiply-add.

Prefill (many rows of x) is compute-bound instead: `matmul` computes 4x4
tiles of the output at once, so every vector loaded from x or the weight feeds
four multiply-adds held in registers. It stays in Numba rather than calling
NumPy's BLAS: OpenBLAS runs its own thread pool, whose spinning threads and
Numba's fight over two cores between every op (measured: prefill 2x slower),
and a Numba kernel widens bf16 weights on the fly instead of copying them.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .numba_math import FASTMATH, bf16_bits_to_float32

GEMV_MAX_ROWS = 8            # up to this many rows of x the weight-streaming GEMV wins over sgemm


# --- bfloat16 storage --------------------------------------------------------

def weight_value(w):
    """One stored weight as float32 (float32 storage: itself; bf16 storage: widened)."""


@overload(weight_value)
def _weight_value(w):
    if w == types.uint16:
        return lambda w: bf16_bits_to_float32(w)
    return lambda w: np.float32(w)


@njit(error_model="numpy", parallel=True, cache=True)
def float32_to_bf16_bits(src, dst):
    """src float32 [N] -> dst uint16 [N], round to nearest even (like torch's .to(bfloat16))."""
    bits = src.view(np.uint32)
    for i in prange(bits.size):
        b = bits[i]
        if (b & 0x7FFFFFFF) > 0x7F800000:      # NaN stays a (quiet) NaN
            dst[i] = np.uint16(((b >> 16) | 0x40) & 0xFFFF)
        else:
            dst[i] = np.uint16(((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF)


def to_bf16(array: np.ndarray) -> np.ndarray:
    """float32 [...] -> bf16 bits as uint16 [...] (round to nearest even)."""
    src = np.ascontiguousarray(array, dtype=np.float32)
    dst = np.empty(src.shape, dtype=np.uint16)
    float32_to_bf16_bits(src.reshape(-1), dst.reshape(-1))
    return dst


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bits [...] -> float32 [...] (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# --- linear ------------------------------------------------------------------

@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def dot(x, w_row):
    """sum_i x[i] * w_row[i] in float32; w_row float32 or bf16 bits."""
    acc = np.float32(0.0)
    for i in range(x.size):
        acc += x[i] * weight_value(w_row[i])
    return acc


@njit(error_model="numpy", parallel=True, fastmath=FASTMATH, cache=True)
def gemv(x, weight, bias, out):
    """x [N, IN] (N small), weight [OUT, IN], bias [OUT] or [0] -> out [N, OUT].

    Threads split the OUT rows; each weight row is read once and dotted with all N rows of x.
    """
    for o in prange(weight.shape[0]):
        w_row = weight[o]
        b = bias[o] if bias.size > 0 else np.float32(0.0)
        for n in range(x.shape[0]):
            out[n, o] = dot(x[n], w_row) + b


@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def matmul_tile(x, n0, weight, o0, bias, out):
    """out[n0:n0+4, o0:o0+4] = x[n0:n0+4] @ weight[o0:o0+4]^T + bias: 16 dot products in one
    pass over IN, so each loaded x and weight vector feeds 4 multiply-adds (registers, not memory)."""
    x0, x1, x2, x3 = x[n0], x[n0 + 1], x[n0 + 2], x[n0 + 3]
    w0, w1, w2, w3 = weight[o0], weight[o0 + 1], weight[o0 + 2], weight[o0 + 3]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    for i in range(x0.size):
        b0, b1, b2, b3 = weight_value(w0[i]), weight_value(w1[i]), weight_value(w2[i]), weight_value(w3[i])
        a00 += x0[i] * b0; a01 += x0[i] * b1; a02 += x0[i] * b2; a03 += x0[i] * b3  # noqa: E702
        a10 += x1[i] * b0; a11 += x1[i] * b1; a12 += x1[i] * b2; a13 += x1[i] * b3  # noqa: E702
        a20 += x2[i] * b0; a21 += x2[i] * b1; a22 += x2[i] * b2; a23 += x2[i] * b3  # noqa: E702
        a30 += x3[i] * b0; a31 += x3[i] * b1; a32 += x3[i] * b2; a33 += x3[i] * b3  # noqa: E702
    tile = ((a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23), (a30, a31, a32, a33))
    for r in range(4):
        for c in range(4):
            out[n0 + r, o0 + c] = tile[r][c] + (bias[o0 + c] if bias.size > 0 else np.float32(0.0))


@njit(error_model="numpy", parallel=True, fastmath=FASTMATH, cache=True)
def matmul(x, weight, bias, out):
    """x [N, IN] @ weight[OUT, IN]^T + bias -> out [N, OUT] for prefill: threads split OUT in
    blocks of 4 weight rows; edges that do not fill a 4x4 tile fall back to single dot products."""
    N, OUT = x.shape[0], weight.shape[0]
    full_n = N - N % 4
    for ot in prange((OUT + 3) // 4):
        o0 = ot * 4
        if o0 + 4 <= OUT:
            for n0 in range(0, full_n, 4):
                matmul_tile(x, n0, weight, o0, bias, out)
        for o in range(o0, min(o0 + 4, OUT)):
            b = bias[o] if bias.size > 0 else np.float32(0.0)
            first = full_n if o0 + 4 <= OUT else 0                   # rows not covered by a tile
            for n in range(first, N):
                out[n, o] = dot(x[n], weight[o]) + b


_NO_BIAS = np.zeros(0, dtype=np.float32)


def linear(x, weight, bias=None):
    """x [..., IN] @ weight[OUT, IN]^T (+ bias [OUT]) -> [..., OUT]; weight float32 or bf16 bits (uint16)."""
    lead, IN = x.shape[:-1], x.shape[-1]
    OUT = weight.shape[0]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, IN)       # [N, IN]
    out = np.empty((x2.shape[0], OUT), dtype=np.float32)                  # [N, OUT]
    kernel = gemv if x2.shape[0] <= GEMV_MAX_ROWS else matmul           # decode: stream the weight once
    kernel(x2, weight, _NO_BIAS if bias is None else bias, out)
    return out.reshape(*lead, OUT)


# --- embedding and logit scale -------------------------------------------------

@njit(error_model="numpy", cache=True)
def gather_rows(ids, table, out):
    """ids [N] -> out [N, D] = table[ids] (float32 or widened bf16 rows); a copy: no threads needed."""
    for n in range(ids.size):
        row = table[ids[n]]
        for d in range(row.size):
            out[n, d] = weight_value(row[d])


def embedding(ids, table):
    """ids [B, T] -> table rows [B, T, D]."""
    ids = np.asarray(ids)
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    out = np.empty((flat.size, table.shape[1]), dtype=np.float32)
    gather_rows(flat, table, out)
    return out.reshape(*ids.shape, table.shape[1])


@njit(error_model="numpy", cache=True)
def scale_rows(x, scale, out):
    """x [N, V] * scale -> out [N, V] (memory-bound: one thread keeps up)."""
    for n in range(x.shape[0]):
        for v in range(x.shape[1]):
            out[n, v] = x[n, v] * scale


def scale_logits(logits, scale):
    """Cohere's logit_scale: logits [..., V] * scale."""
    x2 = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1, logits.shape[-1])
    out = np.empty_like(x2)
    scale_rows(x2, np.float32(scale), out)
    return out.reshape(logits.shape)
