"""GGUF's block formats q8_0, q4_0, q4_1: llama.cpp's bytes, used as stored.

A row of IN weights is cut into blocks of 32; each block keeps its own scale
(and, for q4_1, its own minimum) as an IEEE half float, then its 32 codes. The
Weight's one array `blocks` is uint8 [OUT, IN/32, bytes per block], exactly the
bytes of a GGUF tensor, so a file's tensor data is used as is (`from_gguf`).

    q8_0  34 bytes  | d fp16 | q0 q1 ... q31 (int8) |           w_j = d * q_j
    q4_0  18 bytes  | d fp16 | 16 bytes of nibbles  |           w_j = d * (n_j - 8)
    q4_1  20 bytes  | d fp16 | m fp16 | 16 bytes of nibbles |   w_j = d * n_j + m

Nibble order (q4_0, q4_1): byte j (0..15) holds element j in its LOW nibble and
element j + 16 in its HIGH nibble:

    byte:     0        1       ...     15
    bits:  [n16|n0] [n17|n1]   ...  [n31|n15]      (high nibble | low nibble)

Encoding (gguf-py's `quants.py`, bit for bit; float32 arithmetic throughout,
d and m rounded to fp16 only when stored):

    q8_0  d = max|x| / 127;  q = roundf(x / d)   (x * (1/d), halves away from zero; d = 0 -> q = 0)
    q4_0  M = the x of largest magnitude (the first one on ties), signed;
          d = M / -8;  n = min(15, trunc(x * (1/d) + 8.5))
    q4_1  d = (max - min) / 15;  m = min;  n = min(15, trunc((x - min) * (1/d) + 0.5))

Two ways to multiply (`Weight.mode`):

  exact  decode to float32, then a float32 matmul: what transformers computes
         on a GGUF checkpoint (it dequantizes every tensor with gguf-py at load).
  fast   what llama.cpp computes on the CPU: each row of activations is cut into
         blocks of 32 and quantized to int8 once per matmul, and every
         (weight block, activation block) pair becomes an integer dot product:

             y = sum over blocks  d_w * d_x * sum_j (c_j * q_j)   [+ m_w * s_x  for q4_1]

         with c the weight codes (q for q8_0, n - 8 for q4_0, n for q4_1).
         Activations are block_q8_0 (q8_0, q4_0 weights) or block_q8_1 (q4_1:
         the block also stores s = d * sum_j q_j). llama.cpp's AVX2/AVX path
         (`quantize_row_q8_0` / `quantize_row_q8_1` in ggml-cpu's x86 quants.c),
         which is what runs on x86 CPUs, is matched here:

             a = max|x|;  d = a / 127;  q = round_half_even(x * (127 / a))   (a = 0 -> q = 0)
             d is stored as fp16, s = fp16(d * sum q) with the float32 d.

         (The portable C reference `quantize_row_q8_0_ref` multiplies by 1/d and
         rounds halves away from zero instead: it differs by one in a few codes.)
"""
from __future__ import annotations

import numpy as np

from .weight import Format, UnsupportedFormatError, Weight, register

QK = 32                                             # weights per block
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
GGUF_TYPES = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}    # GGUF type name -> format


# --- bytes <-> numbers -----------------------------------------------------------

def half_at(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 stored at bytes [offset, offset+2) of every block, as float32 [OUT, nb]."""
    return blocks[..., offset:offset + 2].view(np.float16)[..., 0].astype(np.float32)


def half_bytes(values: np.ndarray) -> np.ndarray:
    """float32 [...] -> their fp16 (round to nearest even) as uint8 [..., 2]."""
    return values.astype(np.float16)[..., None].view(np.uint8)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """uint8 [..., 16] -> codes 0..15 [..., 32]: low nibbles are elements 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def pack_nibbles(n: np.ndarray) -> np.ndarray:
    """codes 0..15 [..., 32] -> uint8 [..., 16], the inverse of unpack_nibbles."""
    n = n.astype(np.uint8)
    return n[..., :16] | (n[..., 16:] << 4)


def reciprocal_or_zero(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d == 0 (an all-zero block then gets codes for 0)."""
    return np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: to nearest, halves away from zero. rint rounds halves to even; where v is a half
    (v - rint(v) is exact for |v| < 2**23), step away from zero instead. (A zero may come out -0.)"""
    r = np.rint(v)
    return np.where(np.abs(v - r) == np.float32(0.5), v + np.copysign(np.float32(0.5), v), r)


def as_blocks(w: np.ndarray) -> np.ndarray:
    """float32 [OUT, IN] -> [OUT, IN/32, 32]."""
    return w.reshape(w.shape[0], -1, QK)


# --- the three formats -------------------------------------------------------------

def encode_q8_0(w: np.ndarray) -> dict:
    x = as_blocks(w)
    d = np.abs(x).max(axis=-1) / np.float32(127)                     # [OUT, nb]
    q = round_half_away(x * reciprocal_or_zero(d)[..., None]).astype(np.int8)
    return {"blocks": np.concatenate([half_bytes(d), q.view(np.uint8)], axis=-1)}


def decode_q8_0(weight: Weight) -> np.ndarray:
    b = weight.blocks
    return (b[..., 2:].view(np.int8) * half_at(b, 0)[..., None]).reshape(weight.shape)


def encode_q4_0(w: np.ndarray) -> dict:
    x = as_blocks(w)
    first_largest = np.abs(x).argmax(axis=-1)[..., None]               # the first on ties, like ggml
    d = np.take_along_axis(x, first_largest, axis=-1)[..., 0] / np.float32(-8)
    n = np.minimum(np.trunc(x * reciprocal_or_zero(d)[..., None] + np.float32(8.5)), 15)
    return {"blocks": np.concatenate([half_bytes(d), pack_nibbles(n)], axis=-1)}


def decode_q4_0(weight: Weight) -> np.ndarray:
    b = weight.blocks
    c = unpack_nibbles(b[..., 2:]).astype(np.float32) - np.float32(8)
    return (half_at(b, 0)[..., None] * c).reshape(weight.shape)


def encode_q4_1(w: np.ndarray) -> dict:
    x = as_blocks(w)
    lo, hi = x.min(axis=-1), x.max(axis=-1)
    d = (hi - lo) / np.float32(15)
    n = np.minimum(np.trunc((x - lo[..., None]) * reciprocal_or_zero(d)[..., None] + np.float32(0.5)), 15)
    return {"blocks": np.concatenate([half_bytes(d), half_bytes(lo), pack_nibbles(n)], axis=-1)}


def decode_q4_1(weight: Weight) -> np.ndarray:
    b = weight.blocks
    n = unpack_nibbles(b[..., 4:]).astype(np.float32)
    return (half_at(b, 0)[..., None] * n + half_at(b, 2)[..., None]).reshape(weight.shape)


# --- fast mode: int8 activations, integer block dot products -------------------------

def quantize_activations(x2: np.ndarray):
    """x2 float32 [N, IN] -> llama.cpp's block_q8_1 (AVX2 rounding), as three arrays:
    q int8 [N, IN/32, 32], d float32 [N, IN/32] (fp16-rounded), s float32 [N, IN/32]
    (fp16(d * sum q), for q4_1 weights; q8_0 activations are the same without s)."""
    x = np.ascontiguousarray(x2, dtype=np.float32).reshape(x2.shape[0], -1, QK)
    amax = np.abs(x).max(axis=-1)
    d = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    q = np.rint(x * inv[..., None]).astype(np.int8)                  # rint: halves to even
    s = d * q.sum(axis=-1, dtype=np.int32).astype(np.float32)
    return q, d.astype(np.float16).astype(np.float32), s.astype(np.float16).astype(np.float32)


def fast_matmul(x2: np.ndarray, codes: np.ndarray, d: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """The fast-mode product for any block-scaled integer weight: w = d * c (+ m), c integer codes.

    x2 float32 [N, IN]; codes int [OUT, nb, 32]; d, m float32 [OUT, nb] -> float32 [N, OUT]:
    y[n, o] = sum_b d[o, b] * dx[n, b] * (c[o, b] . q[n, b])  +  sum_b m[o, b] * s[n, b].
    """
    if x2.shape[1] % QK:
        raise UnsupportedFormatError(f"fast mode quantizes activations in blocks of {QK}; "
                                     f"got a row length of {x2.shape[1]}")
    q, dx, s = quantize_activations(x2)
    isum = np.einsum("obk,nbk->nob", codes.astype(np.int32), q.astype(np.int32))   # exact integers
    y = ((d[None] * dx[:, None]) * isum.astype(np.float32)).sum(axis=-1, dtype=np.float32)
    if m is not None:
        y += s @ m.T
    return y.astype(np.float32)


def fast_q8_0(x2, weight):
    b = weight.blocks
    return fast_matmul(x2, b[..., 2:].view(np.int8), half_at(b, 0))


def fast_q4_0(x2, weight):
    b = weight.blocks
    return fast_matmul(x2, unpack_nibbles(b[..., 2:]).astype(np.int8) - 8, half_at(b, 0))


def fast_q4_1(x2, weight):
    b = weight.blocks
    return fast_matmul(x2, unpack_nibbles(b[..., 4:]), half_at(b, 0), half_at(b, 2))


register(Format("q8_0", encode_q8_0, decode_q8_0, block=QK, bits=8.5, fast=fast_q8_0,
                description="GGUF Q8_0: blocks of 32 int8 codes with an fp16 scale"))
register(Format("q4_0", encode_q4_0, decode_q4_0, block=QK, bits=4.5, fast=fast_q4_0,
                description="GGUF Q4_0: blocks of 32 4-bit codes (offset 8) with an fp16 scale"))
register(Format("q4_1", encode_q4_1, decode_q4_1, block=QK, bits=5.0, fast=fast_q4_1,
                description="GGUF Q4_1: blocks of 32 4-bit codes with an fp16 scale and an fp16 minimum"))


# --- GGUF tensors ----------------------------------------------------------------------

def from_gguf(type_name: str, data: np.ndarray, shape, mode: str = "exact") -> Weight:
    """A GGUF tensor as a Weight, without copying its data.

    type_name: the GGUF type ("Q4_1", "F32", ...; gguf-py's `tensor.tensor_type.name`);
    data: the tensor's raw data as stored (gguf-py's `tensor.data`, a memmap);
    shape: the matrix as [OUT, IN], i.e. GGUF's dimension list reversed.
    """
    out_features, in_features = (int(n) for n in shape)
    if type_name in GGUF_TYPES:
        fmt = GGUF_TYPES[type_name]
        if in_features % QK:
            raise UnsupportedFormatError(f"GGUF {type_name} tensor of shape {[out_features, in_features]}: "
                                         f"rows must be a multiple of {QK}")
        blocks = np.asarray(data).view(np.uint8).reshape(out_features, in_features // QK, BLOCK_BYTES[fmt])
        return Weight(fmt, (out_features, in_features), {"blocks": blocks}, mode)
    dense = {"F32": ("float32", np.float32), "F16": ("float16", np.float16), "BF16": ("bfloat16", np.uint16)}
    if type_name in dense:
        fmt, dtype = dense[type_name]
        return Weight(fmt, (out_features, in_features),
                      {"data": np.asarray(data).view(dtype).reshape(out_features, in_features)}, mode)
    raise UnsupportedFormatError(f"GGUF tensor type {type_name} is not supported "
                                 f"(supported: {', '.join([*GGUF_TYPES, *dense])})")


def from_gguf_tensor(tensor, mode: str = "exact") -> Weight:
    """A gguf-py ReaderTensor (from gguf.GGUFReader(path).tensors) as a Weight, without copying."""
    return from_gguf(tensor.tensor_type.name, tensor.data, tuple(int(n) for n in reversed(tensor.shape)), mode)
