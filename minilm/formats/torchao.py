"""torchao's weight-only formats: int8 (one scale per row) and int4 (groups with scale and zero).

int8 (torchao `Int8WeightOnlyConfig()`, per-row symmetric, zero point 0):

    codes  int8    [OUT, IN]      w = codes * scale[o]
    scale  float32 [OUT]

    a = max(max(row), 0, -min(row))                  (torchao's choose_qparams_affine, SYMMETRIC)
    scale = max(a / 127.5, eps)                       127.5 = (127 - (-128)) / 2, eps = float32 eps
    codes = clamp(round_half_even(x * (1 / scale)), -128, 127)     (quantize_affine)

  so the largest value maps to 127.5 -> 128 -> clamped to 127 and the most
  negative one to -128: both ends of int8 are used.

int4 (torchao `Int4WeightOnlyConfig(group_size)`, asymmetric 4-bit per group of
`group_size` (32, 64, 128 or 256; default 128) consecutive weights of a row).
In torchao 0.18 this config's default ("plain") packing quantizes with
`int4_row_quantize_zp` of the mslk kernel library, in float32:

    scale = max(max - min, 1e-6) / 15
    zero  = min + 8 * scale
    q     = clamp(round_half_even((x - min) / scale), 0, 15) - 8       (signed, -8..7)
    w     = q * scale + zero           with scale and zero stored as bfloat16

  q is computed with the float32 scale; only the stored scale and zero are
  rounded to bfloat16 (round to nearest even, torch's `.to(torch.bfloat16)`).
  Numerically this is Q4_1 with a larger group: w = d * n + m with n = q + 8,
  d = scale, m = zero - 8 * scale.

    codes  uint8  [OUT, IN/2]             two signed nibbles per byte (mslk's pack_int4):
                                          element 2i in the LOW nibble, 2i+1 in the HIGH nibble
    scale  uint16 [OUT, IN/group_size]    bfloat16 bits
    zero   uint16 [OUT, IN/group_size]    bfloat16 bits

  (torchao keeps scale and zero transposed, [IN/group_size, OUT], for its CUTLASS
  kernel; here OUT leads like in every minilm format.) torchao skips layers whose
  input width is not a multiple of the group size; quantize() refuses them.

Fast mode (both): the activations are quantized to int8 per block of 32 like
llama.cpp's (see formats/ggml.py) and every block of 32 weights is an integer
dot product; an int4 group spans group_size/32 such blocks with the same d, m.
"""
from __future__ import annotations

import numpy as np

from .weight import Format, UnsupportedFormatError, register
from .bfloat16 import bfloat16_to_float32, to_bfloat16
from .ggml import QK, fast_matmul

INT4_GROUP_SIZES = (32, 64, 128, 256)
FLOAT32_EPS = np.float32(np.finfo(np.float32).eps)


# --- int8 ------------------------------------------------------------------------------

def encode_int8(w: np.ndarray) -> dict:
    a = np.maximum(np.maximum(w.max(axis=1), 0), -np.minimum(w.min(axis=1), 0))
    scale = np.maximum(a / np.float32(127.5), FLOAT32_EPS).astype(np.float32)
    codes = np.clip(np.rint(w * (np.float32(1) / scale)[:, None]), -128, 127).astype(np.int8)
    return {"codes": codes, "scale": scale}


def decode_int8(weight) -> np.ndarray:
    return weight.codes * weight.scale[:, None]


def fast_int8(x2, weight):
    codes = weight.codes.reshape(weight.shape[0], -1, QK)
    d = np.broadcast_to(weight.scale[:, None], codes.shape[:2])
    return fast_matmul(x2, codes, np.ascontiguousarray(d))


# --- int4 ------------------------------------------------------------------------------

def pack_int4(q: np.ndarray) -> np.ndarray:
    """signed codes -8..7 [OUT, IN] -> uint8 [OUT, IN/2]: element 2i low nibble, 2i+1 high."""
    u = q.astype(np.uint8)                                        # two's complement; & 0x0F keeps the nibble
    return (u[:, 0::2] & 0x0F) | (u[:, 1::2] << 4)


def unpack_int4(codes: np.ndarray) -> np.ndarray:
    """uint8 [OUT, IN/2] -> signed codes -8..7 int8 [OUT, IN] (sign-extended nibbles)."""
    nibbles = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(codes.shape[0], -1)
    return (nibbles ^ 8).astype(np.int8) - 8                      # 0..7 -> 0..7, 8..15 -> -8..-1


def encode_int4(w: np.ndarray, group_size: int = 128) -> dict:
    if group_size not in INT4_GROUP_SIZES or w.shape[1] % group_size:
        raise UnsupportedFormatError(f"format 'int4' needs group_size in {INT4_GROUP_SIZES} dividing the row "
                                     f"length; got group_size={group_size} for shape {list(w.shape)}")
    x = w.reshape(w.shape[0], -1, group_size)                     # [OUT, groups, group_size]
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    scale = np.maximum(hi - lo, np.float32(1e-6)) / np.float32(15)
    zero = lo + scale * np.float32(8)
    q = np.clip(np.rint((x - lo) / scale), 0, 15) - 8
    return {"codes": pack_int4(q.reshape(w.shape)),
            "scale": to_bfloat16(scale[..., 0]), "zero": to_bfloat16(zero[..., 0])}


def int4_scale_zero(weight):
    """float32 scale and zero [OUT, groups]."""
    return bfloat16_to_float32(weight.scale), bfloat16_to_float32(weight.zero)


def decode_int4(weight) -> np.ndarray:
    out_features, in_features = weight.shape
    scale, zero = int4_scale_zero(weight)
    q = unpack_int4(weight.codes).reshape(out_features, scale.shape[1], -1).astype(np.float32)
    return (q * scale[..., None] + zero[..., None]).reshape(out_features, in_features)


def fast_int4(x2, weight):
    """As Q4_1 blocks of 32: n = q + 8 in 0..15, d = scale, m = zero - 8 * scale (float32)."""
    out_features, in_features = weight.shape
    scale, zero = int4_scale_zero(weight)
    per_group = in_features // scale.shape[1] // QK               # blocks of 32 per group
    d = np.repeat(scale, per_group, axis=1)                       # [OUT, IN/32]
    m = np.repeat(zero - np.float32(8) * scale, per_group, axis=1)
    n = unpack_int4(weight.codes).reshape(out_features, -1, QK).astype(np.int32) + 8
    return fast_matmul(x2, n, d, m)


register(Format("int8", encode_int8, decode_int8, block=1, bits=8.0, fast=fast_int8,
                description="torchao Int8WeightOnlyConfig: int8 codes, one float32 scale per row"))
register(Format("int4", encode_int4, decode_int4, block=QK, bits=4.25, fast=fast_int4, options=("group_size",),
                defaults={"group_size": 128},
                description="torchao Int4WeightOnlyConfig: 4-bit codes per group with bf16 scale and zero"))
