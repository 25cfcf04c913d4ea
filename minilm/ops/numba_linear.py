"""Numba kernels for linear.py: linear (GEMV / matmul), embedding, scale_logits, for dense weights.

Idea. Decoding one token is a chain of matrix-vector products: every weight
byte is read once and used for one multiply-add, so speed is memory bandwidth.
`gemv` splits the weight rows across the threads (prange), each row is one
contiguous dot product that LLVM vectorises, and x stays in L1. Halving the
bytes halves the time, hence the bfloat16 storage: a bf16 number is the upper
16 bits of a float32, kept as uint16 and widened in the kernel (shift left by
16, reinterpret) right before a float32 multiply-add.

Prefill (many rows of x) is compute-bound instead: `matmul` computes 6x4
tiles of the output at once, so every vector loaded from x or the weight feeds
four or six multiply-adds held in registers, and each thread job keeps a block
of 32 weight rows in cache while the rows of x stream past. It stays in Numba rather than calling
NumPy's BLAS: OpenBLAS runs its own thread pool, whose spinning threads and
Numba's fight over two cores between every op (measured: prefill 2x slower),
and a Numba kernel widens bf16 weights on the fly instead of copying them.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_math import FASTMATH, as_float32

GEMV_MAX_ROWS = 8            # up to this many rows of x the weight-streaming GEMV wins over sgemm


# --- linear ------------------------------------------------------------------

@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def dot(x, w_row):
    """sum_i x[i] * w_row[i] in float32; w_row float32 or bf16 bits."""
    acc = np.float32(0.0)
    for i in range(x.size):
        acc += x[i] * as_float32(w_row[i])
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


TILE_N, TILE_O = 6, 4         # a matmul tile: 6 rows of x times 4 weight rows = 24 accumulators
BLOCK_O = 32                 # weight rows per thread job: they stay in L2 while every x row passes


@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def matmul_tile(x, n0, weight, o0, bias, out):
    """out[n0:n0+6, o0:o0+4] = x[n0:n0+6] @ weight[o0:o0+4]^T + bias: 24 dot products in one
    pass over IN; each loaded weight vector feeds 6 multiply-adds and each x vector 4, in registers."""
    x0, x1, x2, x3, x4, x5 = x[n0], x[n0 + 1], x[n0 + 2], x[n0 + 3], x[n0 + 4], x[n0 + 5]
    w0, w1, w2, w3 = weight[o0], weight[o0 + 1], weight[o0 + 2], weight[o0 + 3]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = np.float32(0.0)
    for i in range(x0.size):
        b0, b1, b2, b3 = as_float32(w0[i]), as_float32(w1[i]), as_float32(w2[i]), as_float32(w3[i])
        a00 += x0[i] * b0; a01 += x0[i] * b1; a02 += x0[i] * b2; a03 += x0[i] * b3  # noqa: E702
        a10 += x1[i] * b0; a11 += x1[i] * b1; a12 += x1[i] * b2; a13 += x1[i] * b3  # noqa: E702
        a20 += x2[i] * b0; a21 += x2[i] * b1; a22 += x2[i] * b2; a23 += x2[i] * b3  # noqa: E702
        a30 += x3[i] * b0; a31 += x3[i] * b1; a32 += x3[i] * b2; a33 += x3[i] * b3  # noqa: E702
        a40 += x4[i] * b0; a41 += x4[i] * b1; a42 += x4[i] * b2; a43 += x4[i] * b3  # noqa: E702
        a50 += x5[i] * b0; a51 += x5[i] * b1; a52 += x5[i] * b2; a53 += x5[i] * b3  # noqa: E702
    tile = ((a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23), (a30, a31, a32, a33),
            (a40, a41, a42, a43), (a50, a51, a52, a53))
    for r in range(TILE_N):
        for c in range(TILE_O):
            out[n0 + r, o0 + c] = tile[r][c] + (bias[o0 + c] if bias.size > 0 else np.float32(0.0))


@njit(error_model="numpy", parallel=True, fastmath=FASTMATH, cache=True)
def matmul(x, weight, bias, out):
    """x [N, IN] @ weight[OUT, IN]^T + bias -> out [N, OUT] for prefill: threads split OUT in
    blocks of BLOCK_O weight rows; a block meets 6 rows of x at a time (read once from memory,
    reused from L1 by all the block's 6x4 tiles); leftover rows and columns use single dot products."""
    N, OUT = x.shape[0], weight.shape[0]
    full_n = N - N % TILE_N
    for ob in prange((OUT + BLOCK_O - 1) // BLOCK_O):
        o_lo, o_hi = ob * BLOCK_O, min(ob * BLOCK_O + BLOCK_O, OUT)
        full_o = o_lo + (o_hi - o_lo) // TILE_O * TILE_O
        for n0 in range(0, full_n, TILE_N):
            for o0 in range(o_lo, full_o, TILE_O):
                matmul_tile(x, n0, weight, o0, bias, out)
        for o in range(o_lo, o_hi):                                  # what the tiles did not cover
            b = bias[o] if bias.size > 0 else np.float32(0.0)
            for n in range(full_n if o < full_o else 0, N):
                out[n, o] = dot(x[n], weight[o]) + b


NO_BIAS = np.zeros(0, dtype=np.float32)


def dense_linear(x2, weight, bias, out):
    """float32 / bfloat16 weights: x2 [N, IN] -> out [N, OUT]; decode streams the weight once."""
    kernel = gemv if x2.shape[0] <= GEMV_MAX_ROWS else matmul
    kernel(x2, weight.data, bias, out)


def dense_embedding(ids, table, out):
    gather_rows(ids, table.data, out)


# (format, mode) -> kernel(x2 [N, IN] float32, weight, bias [OUT] or [0], out [N, OUT]); the quantized
# formats' kernels are in numba_quant.py. Dense formats quantize no activations: both modes are the same.
LINEAR = {(f, m): dense_linear for f in ("float32", "bfloat16") for m in ("exact", "fast")}
EMBEDDING = {"float32": dense_embedding, "bfloat16": dense_embedding}


# --- embedding and logit scale -------------------------------------------------

@njit(error_model="numpy", cache=True)
def gather_rows(ids, table, out):
    """ids [N] -> out [N, D] = table[ids] (float32 or widened bf16 rows); a copy: no threads needed."""
    for n in range(ids.size):
        row = table[ids[n]]
        for d in range(row.size):
            out[n, d] = as_float32(row[d])


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
