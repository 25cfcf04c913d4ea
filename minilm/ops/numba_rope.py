"""Numba kernel for rope.py: apply_rope, half-split (Llama) and interleaved (Cohere) pairs.

Idea. Each token rotates HD/2 pairs of every head by that token's angles; the
two layouts differ only in where pair i lives: (i, i + HD/2) or (2i, 2i + 1).
No threads: rotating a 512-token prefill takes well under a millisecond.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(error_model="numpy", cache=True)
def rope_token(x, cos, sin, interleaved, out):
    """x [H, HD] of one token, cos/sin [HD/2] -> out [H, HD]."""
    half = x.shape[1] // 2
    for h in range(x.shape[0]):
        for i in range(half):
            ia, ib = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
            a, b = x[h, ia], x[h, ib]
            out[h, ia] = a * cos[i] - b * sin[i]
            out[h, ib] = b * cos[i] + a * sin[i]


@njit(error_model="numpy", cache=True)
def rope_tokens(x, cos, sin, interleaved, out):
    """x [N, H, HD], cos/sin [N, HD/2] -> out [N, H, HD]."""
    for n in range(x.shape[0]):
        rope_token(x[n], cos[n], sin[n], interleaved, out[n])


def apply_rope(x, cos, sin, interleaved):
    """Same signature as rope.apply_rope: x [B, T, H, HD] rotated by cos, sin [B, T, HD/2]."""
    B, T, H, HD = x.shape
    x3 = np.ascontiguousarray(x, dtype=np.float32).reshape(B * T, H, HD)          # [N, H, HD]
    cos2 = np.ascontiguousarray(cos, dtype=np.float32).reshape(B * T, HD // 2)     # [N, HD/2]
    sin2 = np.ascontiguousarray(sin, dtype=np.float32).reshape(B * T, HD // 2)
    out = np.empty_like(x3)
    rope_tokens(x3, cos2, sin2, bool(interleaved), out)
    return out.reshape(B, T, H, HD)
