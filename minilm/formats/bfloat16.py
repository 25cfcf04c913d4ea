"""bfloat16: the upper 16 bits of a float32 (8 exponent bits, 7 mantissa bits).

NumPy has no bfloat16 dtype, so minilm keeps bfloat16 numbers as their raw bits
in uint16 arrays. Converting down rounds to nearest even, like torch's
`.to(torch.bfloat16)`; the one NaN rule: every NaN becomes the canonical quiet
NaN 0x7FC0 (rounding its bits could carry it into an infinity). Checkpoints
with NaN are refused at load anyway; the rule only keeps tests deterministic.
Converting up is exact: shift the bits back into place.
"""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 22      # elements per pass when narrowing: bounds the uint32 temporaries on large matrices


def to_bfloat16(array: np.ndarray) -> np.ndarray:
    """float32 [...] -> bfloat16 bits as uint16 [...], round to nearest even."""
    src = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    out = np.empty(src.size, dtype=np.uint16)
    for start in range(0, src.size, CHUNK):
        bits = src[start:start + CHUNK].view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
        nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        out[start:start + CHUNK] = np.where(nan, np.uint32(0x7FC0), rounded)
    return out.reshape(np.shape(array))


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) [...] -> float32 [...], exact."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def widen(array: np.ndarray) -> np.ndarray:
    """float32 as is; bfloat16 bits (uint16) widened: for arrays that may be stored either way."""
    return bfloat16_to_float32(array) if array.dtype == np.uint16 else array
