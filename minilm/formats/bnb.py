"""bitsandbytes' 4-bit formats fp4 and nf4: a 16-entry code table and one absmax per 64 weights.

bitsandbytes quantizes the flattened weight in blocks of 64 (`quantize_4bit(w,
blocksize=64, quant_type=...)`, no double quantization): every weight is
divided by its block's largest magnitude and replaced by the index of the
nearest of 16 table values; w = table[n] * absmax. minilm requires IN % 64 == 0,
so a block never straddles two rows:

    codes   uint8   [OUT, IN/2]     two codes per byte, the FIRST element in the HIGH nibble
    absmax  float32 [OUT, IN/64]

    byte i of a row:  [n(2i) | n(2i+1)]        (high nibble | low nibble; GGUF is the other way)

Encoding (bitsandbytes' default/CPU `quantize_4bit`, float32 throughout):

    a = max |x| over the block (stored as is, 0 for an all-zero block)
    t = clamp(x * (1 / max(a, 1e-38)), -1, 1)
    n = the code whose table value is nearest to t: t is located among the 15
        midpoints between consecutive sorted table values (a t exactly on a
        midpoint takes the lower value), then mapped back to its table index.

FP4's table holds both +0 (index 0) and -0 (index 8); sorted stably, -0 comes
after +0, so t = 0 becomes code 0 but a positive t below half the smallest
nonzero value becomes code 8 (-0). Both decode to zero.

fp4 is what transformers' `BitsAndBytesConfig(load_in_4bit=True)` picks by
default (bnb_4bit_quant_type="fp4"); nf4 must be asked for.

These formats have no fast mode: their table values are not equally spaced
(NF4's are normal-distribution quantiles, FP4's a tiny float format spanning
0.0625..12), so a block is not an integer code times a scale and an integer
dot product cannot stand in for the float one. Only "exact" exists.
"""
from __future__ import annotations

import numpy as np

from .weight import Format, UnsupportedFormatError, register

BLOCK = 64
NF4_TABLE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
# sign bit, 2 exponent bits, 1 mantissa bit, in bitsandbytes' index order; normalized by 12
FP4_TABLE = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3],
                     dtype=np.float32) / np.float32(12)
TABLES = {"fp4": FP4_TABLE, "nf4": NF4_TABLE}


def midpoints_and_order(table: np.ndarray):
    """The 15 midpoints between sorted table values (float32), and sorted position -> table index."""
    order = np.argsort(table, kind="stable")
    return (table[order[:-1]] + table[order[1:]]) / np.float32(2), order


def nearest_sorted(midpoints: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The sorted position of the table value nearest to each t: the number of midpoints below t
    (np.searchsorted(midpoints, t, side="left") for finite t, in a tenth of its time)."""
    position = np.zeros(t.shape, np.uint8)
    for m in midpoints:
        position += t > m
    return position


def check_shape(name: str, w_shape) -> None:
    if w_shape[1] % BLOCK:
        raise UnsupportedFormatError(f"format {name!r} needs a row length that is a multiple of {BLOCK} "
                                     f"(blocks must not straddle rows); got shape {list(w_shape)}")


def encoder(name: str):
    midpoints, order = midpoints_and_order(TABLES[name])
    order = order.astype(np.uint8)

    def encode(w: np.ndarray) -> dict:
        check_shape(name, w.shape)
        x = w.reshape(w.shape[0], -1, BLOCK)                           # [OUT, IN/64, 64]
        absmax = np.abs(x).max(axis=-1)
        t = np.clip(x * (np.float32(1) / np.maximum(absmax, np.float32(1e-38)))[..., None], -1, 1)
        n = order[nearest_sorted(midpoints, t)].reshape(w.shape)
        return {"codes": (n[:, 0::2] << 4) | n[:, 1::2], "absmax": absmax.astype(np.float32)}
    return encode


def decoder(name: str):
    table = TABLES[name]

    def decode(weight) -> np.ndarray:
        codes, absmax = weight.codes, weight.absmax
        n = np.stack([codes >> 4, codes & 0x0F], axis=-1).reshape(codes.shape[0], -1, BLOCK)
        return (table[n] * absmax[..., None]).reshape(weight.shape)
    return decode


register(Format("fp4", encoder("fp4"), decoder("fp4"), block=BLOCK, bits=4.5,
                description="bitsandbytes FP4 (transformers' load_in_4bit default): 4-bit float codes, absmax per 64"))
register(Format("nf4", encoder("nf4"), decoder("nf4"), block=BLOCK, bits=4.5,
                description="bitsandbytes NF4: normal-quantile codes, absmax per 64"))
