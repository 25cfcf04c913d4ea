"""Row kernels of the quantized formats: one weight row dotted with one activation row, or decoded.

numba_quant.py's drivers (GEMV, matmul, embedding) are the same for every
format; what differs is here, three functions per format family:

    exact_dot(w, o, x2, n)          sum_i x2[n, i] * W[o, i]     W decoded in registers, float32
    decode_row(w, o, dst, r)        dst[r, :IN] = W[o]           the NumPy decode's values, bit for bit
    fast_dot(w, o, xq, xds, n, simd)                             llama.cpp's arithmetic on int8 activations

`w` is the tuple of the Weight's arrays (its types say which family it is):

    ggml   (blocks uint8 [OUT, IN/32, 34|18|20],)       q8_0, q4_0, q4_1: the block size says which
    int8   (codes int8 [OUT, IN], scale float32 [OUT])
    int4   (codes uint8 [OUT, IN/2], scale uint16 [OUT, G], zero uint16 [OUT, G])   bf16 bits
    bnb    (codes uint8 [OUT, IN/2], absmax float32 [OUT, IN/64], table float32 [16])  fp4, nf4

On AVX-512 VNNI (numba_simd.SIMD_LEVEL "avx512-vnni") the decode dot product of q4_0 and q4_1
takes two blocks per step in 512-bit registers (fast_dot_ggml_pairs; numba_simd, "two blocks per
step"); every other level and format takes one block at a time.

bnb's exact dot looks its codes up with vpermps where the CPU has AVX2 (chosen
when compiling, from HAS_AVX2) and with plain table loads elsewhere.

Fast-mode activations (numba_quant.quantize_activation_row): xq int8 [N, IN/32, 32]
codes and xds float32 [N, IN/32, 2] = (d, s) per block, llama.cpp's block_q8_1 with
float32 d and s. `simd` is a marker array whose dtype picks, at compile time,
the block dot products of the CPU's instruction set (uint8: numba_simd.SIMD_LEVEL,
AVX-512 VNNI, AVX2 or NEON), generic LLVM vectors (int16: what a CPU without a
named level gets) or plain loops (int8).

Inner loops over the 32 codes of a block take their length from an array's
shape at run time: with a literal range(32) LLVM unrolls the loop completely
and then vectorises the block loop around it on a stride guess that never
holds (measured 4.5-5.6x slower).
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload

from .numba_math import FASTMATH, as_python, bf16_bits_to_float32, python_when_jit_disabled
from .numba_simd import (CHOOSE, HAS_AVX2, MARKER_DTYPES, add_f32x8, add_i8x32, dpbusd, dpbusd_x2, eights_i8x64,
                         add_f32x4, fma_f32x8, fma_i32x8, fma_pair, isum_operands, isum_signed, isum_signed_vnni, isum_unsigned,
                         load_f32x8, load_half, load_i8x16, load_i8x32, load_scale_pair, load_two_blocks,
                         load_two_rows_f32x4, lookup16, marker_level, mul_f32x4, odd_lanes_sum,
                         nibbles, nibbles_high_first, nibbles_interleaved, nibbles_pair, operands_signed,
                         operands_unsigned, scale, scale_add, store_f32x8, sub_i32x16, sum_f32x8, sum_f32x16,
                         widen_i8, widen_u8, xor_i8x32, zeros_f32x4, zeros_f32x8, zeros_f32x16)

QK = 32
JIT = dict(error_model="numpy", fastmath=FASTMATH, inline="always", cache=True)
LOOPS = dict(error_model="numpy", fastmath=FASTMATH, cache=True)    # plain loops: LLVM inlines them when it pays


# --- ggml: q8_0, q4_0, q4_1 ------------------------------------------------------------

@njit(**JIT)
def decode_block_ggml(blocks, o, b, kind):
    """Block b of row o as 4 x 8 float32 (elements 0-7, ..., 24-31); kind = bytes per block."""
    d = load_half(blocks, (o, b, 0))
    if kind == 20:                                                # q4_1: d * n + m
        w0, w1, w2, w3 = widen_u8(nibbles(load_i8x16(blocks, (o, b, 4))))
        m = load_half(blocks, (o, b, 2))
        return scale_add(w0, d, m), scale_add(w1, d, m), scale_add(w2, d, m), scale_add(w3, d, m)
    if kind == 18:                                                # q4_0: d * (n - 8)
        w0, w1, w2, w3 = widen_i8(add_i8x32(nibbles(load_i8x16(blocks, (o, b, 2))), -8))
    else:                                                         # q8_0: d * q
        w0, w1, w2, w3 = widen_i8(load_i8x32(blocks, (o, b, 2)))
    return scale(w0, d), scale(w1, d), scale(w2, d), scale(w3, d)


@njit(**JIT)
def exact_dot_blocks(blocks, o, x2, n, kind):
    a0 = a1 = a2 = a3 = zeros_f32x8()                             # 4 accumulators: 4 independent FMA chains
    for b in range(blocks.shape[1]):
        w0, w1, w2, w3 = decode_block_ggml(blocks, o, b, kind)
        i = b * QK
        a0 = fma_f32x8(load_f32x8(x2, (n, i)), w0, a0)
        a1 = fma_f32x8(load_f32x8(x2, (n, i + 8)), w1, a1)
        a2 = fma_f32x8(load_f32x8(x2, (n, i + 16)), w2, a2)
        a3 = fma_f32x8(load_f32x8(x2, (n, i + 24)), w3, a3)
    return sum_f32x8(add_f32x8(add_f32x8(a0, a1), add_f32x8(a2, a3)))


@njit(**JIT)
def exact_dot_ggml(w, o, x2, n):
    kind = w[0].shape[2]
    if kind == 20:                              # a constant kind per call: LLVM drops the other formats' branches
        return exact_dot_blocks(w[0], o, x2, n, 20)
    if kind == 18:
        return exact_dot_blocks(w[0], o, x2, n, 18)
    return exact_dot_blocks(w[0], o, x2, n, 34)


@njit(**JIT)
def decode_row_blocks(blocks, o, dst, r, kind):
    for b in range(blocks.shape[1]):
        w0, w1, w2, w3 = decode_block_ggml(blocks, o, b, kind)
        i = b * QK
        store_f32x8(dst, (r, i), w0)
        store_f32x8(dst, (r, i + 8), w1)
        store_f32x8(dst, (r, i + 16), w2)
        store_f32x8(dst, (r, i + 24), w3)


@njit(**JIT)
def decode_row_ggml(w, o, dst, r):
    kind = w[0].shape[2]
    if kind == 20:
        decode_row_blocks(w[0], o, dst, r, 20)
    elif kind == 18:
        decode_row_blocks(w[0], o, dst, r, 18)
    else:
        decode_row_blocks(w[0], o, dst, r, 34)


@njit(**JIT)
def fast_dot_q8_0_simd(blocks, o, xq, xds, n, simd):
    acc = zeros_f32x8()
    for b in range(blocks.shape[1]):
        isum = isum_signed(load_i8x32(blocks, (o, b, 2)), load_i8x32(xq, (n, b, 0)), simd)
        acc = fma_i32x8(acc, isum, load_half(blocks, (o, b, 0)) * xds[n, b, 0])
    return sum_f32x8(acc)


@njit(**JIT)
def fast_dot_q4_0_simd(blocks, o, xq, xds, n, simd):
    acc = zeros_f32x8()
    for b in range(blocks.shape[1]):
        codes = add_i8x32(nibbles(load_i8x16(blocks, (o, b, 2))), -8)       # n - 8: signed -8..7
        isum = isum_signed(codes, load_i8x32(xq, (n, b, 0)), simd)
        acc = fma_i32x8(acc, isum, load_half(blocks, (o, b, 0)) * xds[n, b, 0])
    return sum_f32x8(acc)


@njit(**JIT)
def fast_dot_q4_1_simd(blocks, o, xq, xds, n, simd):
    acc = zeros_f32x8()
    mins = np.float32(0.0)
    for b in range(blocks.shape[1]):
        codes = nibbles(load_i8x16(blocks, (o, b, 4)))                       # n: unsigned 0..15, no sign trick
        isum = isum_unsigned(codes, load_i8x32(xq, (n, b, 0)), simd)
        acc = fma_i32x8(acc, isum, load_half(blocks, (o, b, 0)) * xds[n, b, 0])
        mins += load_half(blocks, (o, b, 2)) * xds[n, b, 1]                # m * s = m * d_x * sum q
    return sum_f32x8(acc) + mins


@njit(**JIT)
def fast_dot_ggml_simd(w, o, xq, xds, n, simd):
    blocks = w[0]
    kind = blocks.shape[2]
    if kind == 20:
        return fast_dot_q4_1_simd(blocks, o, xq, xds, n, simd)
    if kind == 18:
        return fast_dot_q4_0_simd(blocks, o, xq, xds, n, simd)
    return fast_dot_q8_0_simd(blocks, o, xq, xds, n, simd)


@njit(**JIT)
def pair_scales(blocks, o, xq_scales, n, b):
    """[d_w * d_x, m * s, ...] of blocks b and b+1: lanes 0 and 2 the two blocks' scales, 1 and 3
    q4_1's m * s terms (q4_0: unused)."""
    return mul_f32x4(load_scale_pair(blocks, (o, b, 0), (o, b + 1, 0)), load_two_rows_f32x4(xq_scales, (n, b, 0)))


@njit(**JIT)
def fast_dot_q4_0_pairs(blocks, o, xq, xds, n):
    """fast_dot_q4_0 with AVX-512 VNNI, two blocks per step (numba_simd: "two blocks per step")."""
    acc = zeros_f32x16()
    nb = blocks.shape[1]
    for b in range(0, nb - 1, 2):
        codes = nibbles_pair(load_i8x16(blocks, (o, b, 2)), load_i8x16(blocks, (o, b + 1, 2)))   # n: 0..15
        x = load_two_blocks(xq, (n, b, 0))
        isum = sub_i32x16(dpbusd_x2(codes, x), dpbusd_x2(eights_i8x64(), x))                   # (n - 8) . x
        acc = fma_pair(acc, isum, pair_scales(blocks, o, xds, n, b))
    total = sum_f32x16(acc)
    if nb % 2:                                                    # an odd last block: one at a time
        b = nb - 1
        codes = add_i8x32(nibbles(load_i8x16(blocks, (o, b, 2))), -8)
        isum = isum_signed_vnni(codes, load_i8x32(xq, (n, b, 0)))
        total += sum_f32x8(fma_i32x8(zeros_f32x8(), isum, load_half(blocks, (o, b, 0)) * xds[n, b, 0]))
    return total


@njit(**JIT)
def fast_dot_q4_1_pairs(blocks, o, xq, xds, n):
    """fast_dot_q4_1 with AVX-512 VNNI, two blocks per step."""
    acc = zeros_f32x16()
    mins = zeros_f32x4()
    nb = blocks.shape[1]
    for b in range(0, nb - 1, 2):
        codes = nibbles_pair(load_i8x16(blocks, (o, b, 4)), load_i8x16(blocks, (o, b + 1, 4)))
        scales = pair_scales(blocks, o, xds, n, b)
        acc = fma_pair(acc, dpbusd_x2(codes, load_two_blocks(xq, (n, b, 0))), scales)
        mins = add_f32x4(mins, scales)                                # lanes 1, 3: m * s
    total = sum_f32x16(acc) + odd_lanes_sum(mins)
    if nb % 2:
        b = nb - 1
        isum = dpbusd(nibbles(load_i8x16(blocks, (o, b, 4))), load_i8x32(xq, (n, b, 0)))
        total += sum_f32x8(fma_i32x8(zeros_f32x8(), isum, load_half(blocks, (o, b, 0)) * xds[n, b, 0]))
        total += load_half(blocks, (o, b, 2)) * xds[n, b, 1]
    return total


@njit(**JIT)
def fast_dot_ggml_pairs(w, o, xq, xds, n, simd):
    """fast_dot_ggml_simd on AVX-512 VNNI: the 4-bit formats two blocks per step (q8_0's blocks fill a
    ymm register already)."""
    blocks = w[0]
    kind = blocks.shape[2]
    if kind == 20:
        return fast_dot_q4_1_pairs(blocks, o, xq, xds, n)
    if kind == 18:
        return fast_dot_q4_0_pairs(blocks, o, xq, xds, n)
    return fast_dot_q8_0_simd(blocks, o, xq, xds, n, simd)


@njit(**LOOPS)
def fast_dot_ggml_portable(w, o, xq, xds, n):
    """The same sums with plain integer loops (any CPU)."""
    blocks = w[0]
    kind = blocks.shape[2]
    half = xq.shape[2] // 2
    acc = mins = np.float32(0.0)
    for b in range(blocks.shape[1]):
        isum = 0
        if kind == 34:                                            # q8_0
            for j in range(2 * half):
                isum += np.int8(blocks[o, b, 2 + j]) * np.int32(xq[n, b, j])
        else:                                                     # q4_0 (n - 8), q4_1 (n)
            start, offset = (4, 0) if kind == 20 else (2, 8)
            for j in range(half):
                byte = np.int32(blocks[o, b, start + j])
                isum += ((byte & 15) - offset) * np.int32(xq[n, b, j]) \
                    + ((byte >> 4) - offset) * np.int32(xq[n, b, j + half])
        acc += np.float32(isum) * (load_half(blocks, (o, b, 0)) * xds[n, b, 0])
        if kind == 20:
            mins += load_half(blocks, (o, b, 2)) * xds[n, b, 1]
    return acc + mins


# --- int8: codes [OUT, IN], one scale per row ---------------------------------------------

@njit(**JIT)
def exact_dot_int8(w, o, x2, n):
    codes, row_scale = w
    acc = np.float32(0.0)
    for i in range(codes.shape[1]):
        acc += x2[n, i] * np.float32(codes[o, i])
    return acc * row_scale[o]


@njit(**JIT)
def decode_row_int8(w, o, dst, r):
    codes, row_scale = w
    for i in range(codes.shape[1]):
        dst[r, i] = np.float32(codes[o, i]) * row_scale[o]


@njit(**JIT)
def fast_dot_int8_simd(w, o, xq, xds, n, simd):
    codes, row_scale = w
    acc = zeros_f32x8()
    for b in range(codes.shape[1] // QK):
        # a code of -128 works: vpsignb gives |-128| = 0x80, which vpmaddubsw reads as unsigned 128
        isum = isum_signed(load_i8x32(codes, (o, b * QK)), load_i8x32(xq, (n, b, 0)), simd)
        acc = fma_i32x8(acc, isum, xds[n, b, 0])
    return sum_f32x8(acc) * row_scale[o]


@njit(**LOOPS)
def fast_dot_int8_portable(w, o, xq, xds, n):
    codes, row_scale = w
    size = xq.shape[2]
    acc = np.float32(0.0)
    for b in range(codes.shape[1] // size):
        isum = 0
        for j in range(size):
            isum += np.int32(codes[o, b * size + j]) * np.int32(xq[n, b, j])
        acc += np.float32(isum) * xds[n, b, 0]
    return acc * row_scale[o]


# --- int4: torchao's nibbles (2i low, 2i+1 high, signed), bf16 scale and zero per group --------
#
# Loops run over groups, then over the group's blocks of 32, so the group's scale
# and zero are widened once and no block index is ever divided.

@njit(**JIT)
def int4_group(w, o, g):
    """Group g of row o: its blocks of 32 weights (first, last + 1) and its float32 scale and zero."""
    codes, group_scale, group_zero = w
    per_group = codes.shape[1] // (QK // 2) // group_scale.shape[1]
    return g * per_group, (g + 1) * per_group, bf16_bits_to_float32(group_scale[o, g]), \
        bf16_bits_to_float32(group_zero[o, g])


@njit(**JIT)
def int4_unsigned(codes, o, b):
    """Block b of row o as u = q + 8 (0..15), in element order: the signed nibble s is q & 15, so u = s ^ 8."""
    return xor_i8x32(nibbles_interleaved(load_i8x16(codes, (o, b * (QK // 2)))), 8)


@njit(**JIT)
def decode_block_int4(codes, o, b, d, z):
    w0, w1, w2, w3 = widen_i8(add_i8x32(int4_unsigned(codes, o, b), -8))    # q: -8..7
    return scale_add(w0, d, z), scale_add(w1, d, z), scale_add(w2, d, z), scale_add(w3, d, z)


@njit(**JIT)
def exact_dot_int4(w, o, x2, n):
    a0 = a1 = a2 = a3 = zeros_f32x8()
    for g in range(w[1].shape[1]):
        first, end, d, z = int4_group(w, o, g)
        for b in range(first, end):
            w0, w1, w2, w3 = decode_block_int4(w[0], o, b, d, z)
            i = b * QK
            a0 = fma_f32x8(load_f32x8(x2, (n, i)), w0, a0)
            a1 = fma_f32x8(load_f32x8(x2, (n, i + 8)), w1, a1)
            a2 = fma_f32x8(load_f32x8(x2, (n, i + 16)), w2, a2)
            a3 = fma_f32x8(load_f32x8(x2, (n, i + 24)), w3, a3)
    return sum_f32x8(add_f32x8(add_f32x8(a0, a1), add_f32x8(a2, a3)))


@njit(**JIT)
def decode_row_int4(w, o, dst, r):
    for g in range(w[1].shape[1]):
        first, end, d, z = int4_group(w, o, g)
        for b in range(first, end):
            w0, w1, w2, w3 = decode_block_int4(w[0], o, b, d, z)
            i = b * QK
            store_f32x8(dst, (r, i), w0)
            store_f32x8(dst, (r, i + 8), w1)
            store_f32x8(dst, (r, i + 16), w2)
            store_f32x8(dst, (r, i + 24), w3)


@njit(**JIT)
def fast_dot_int4_simd(w, o, xq, xds, n, simd):
    """As q4_1: w = d * u + m with u = q + 8 (0..15), d = scale, m = zero - 8 * scale.
    One loop over the blocks (from 0, so indexing xds needs no negative-index fix-up);
    a countdown says when the next group, with its d and m, starts."""
    codes, group_scale, group_zero = w
    per_group = codes.shape[1] // (QK // 2) // group_scale.shape[1]
    acc = zeros_f32x8()
    mins = d = m = np.float32(0.0)
    g = left = 0
    for b in range(codes.shape[1] // (QK // 2)):
        if left == 0:
            d = bf16_bits_to_float32(group_scale[o, g])
            m = bf16_bits_to_float32(group_zero[o, g]) - np.float32(8.0) * d
            g, left = g + 1, per_group
        left -= 1
        isum = isum_unsigned(int4_unsigned(codes, o, b), load_i8x32(xq, (n, b, 0)), simd)
        acc = fma_i32x8(acc, isum, d * xds[n, b, 0])
        mins += m * xds[n, b, 1]
    return sum_f32x8(acc) + mins


@njit(**LOOPS)
def fast_dot_int4_portable(w, o, xq, xds, n):
    codes, group_scale, group_zero = w
    half = xq.shape[2] // 2
    per_group = codes.shape[1] // half // group_scale.shape[1]
    acc = mins = d = m = np.float32(0.0)
    g = left = 0
    for b in range(codes.shape[1] // half):
        if left == 0:
            d = bf16_bits_to_float32(group_scale[o, g])
            m = bf16_bits_to_float32(group_zero[o, g]) - np.float32(8.0) * d
            g, left = g + 1, per_group
        left -= 1
        isum = 0
        for j in range(half):
            byte = np.int32(codes[o, b * half + j])
            isum += ((byte & 15) ^ 8) * np.int32(xq[n, b, 2 * j]) \
                + ((byte >> 4) ^ 8) * np.int32(xq[n, b, 2 * j + 1])
        acc += np.float32(isum) * (d * xds[n, b, 0])
        mins += m * xds[n, b, 1]
    return acc + mins


# --- bnb: fp4 / nf4, codes first-element-high, absmax per 64, a 16-entry table -------------------

@njit(**LOOPS)
def exact_dot_bnb(w, o, x2, n):
    codes, absmax, table = w
    per_block = codes.shape[1] // absmax.shape[1]                 # 32 bytes = 64 weights
    acc = np.float32(0.0)
    for blk in range(absmax.shape[1]):
        s = np.float32(0.0)
        for k in range(blk * per_block, (blk + 1) * per_block):
            byte = codes[o, k]
            s += x2[n, 2 * k] * table[byte >> 4] + x2[n, 2 * k + 1] * table[byte & 15]
        acc += s * absmax[o, blk]
    return acc


@njit(**JIT)
def exact_dot_bnb_avx2(w, o, x2, n):
    """The same sum, 8 weights at a time: table lookups by vpermps, two FMA chains."""
    codes, absmax, table = w
    low, high = load_f32x8(table, (0,)), load_f32x8(table, (8,))
    per_block = codes.shape[1] // absmax.shape[1]
    acc = zeros_f32x8()
    for blk in range(absmax.shape[1]):
        s0 = s1 = zeros_f32x8()
        for k in range(blk * per_block, (blk + 1) * per_block, 8):          # 8 bytes = 16 weights
            w0 = lookup16(low, high, nibbles_high_first(codes, (o, k)))
            w1 = lookup16(low, high, nibbles_high_first(codes, (o, k + 4)))
            s0 = fma_f32x8(load_f32x8(x2, (n, 2 * k)), w0, s0)
            s1 = fma_f32x8(load_f32x8(x2, (n, 2 * k + 8)), w1, s1)
        acc = add_f32x8(acc, scale(add_f32x8(s0, s1), absmax[o, blk]))
    return sum_f32x8(acc)


@njit(**JIT)
def decode_row_bnb(w, o, dst, r):
    codes, absmax, table = w
    per_block = codes.shape[1] // absmax.shape[1]
    for k in range(codes.shape[1]):
        a = absmax[o, k // per_block]
        byte = codes[o, k]
        dst[r, 2 * k] = table[byte >> 4] * a
        dst[r, 2 * k + 1] = table[byte & 15] * a


# --- fast prefill: one weight block against 4 activation rows ---------------------------------------
#
# In prefill the same weight block meets many activation rows, so it is unpacked
# once and used 4 times. Every format gives its block as the operands (u, v) of
# numba_simd.isum_operands (on x86: |w| and w's sign for signed codes, the codes
# and ones for unsigned ones), plus the block's d and m.

@njit(**JIT)
def block_operands_ggml(w, o, b, simd):
    blocks = w[0]
    kind = blocks.shape[2]
    d = load_half(blocks, (o, b, 0))
    if kind == 20:
        u, v = operands_unsigned(nibbles(load_i8x16(blocks, (o, b, 4))), simd)
        return u, v, d, load_half(blocks, (o, b, 2))
    codes = add_i8x32(nibbles(load_i8x16(blocks, (o, b, 2))), -8) if kind == 18 else load_i8x32(blocks, (o, b, 2))
    u, v = operands_signed(codes, simd)
    return u, v, d, np.float32(0.0)


@njit(**JIT)
def block_operands_int8(w, o, b, simd):
    codes, row_scale = w
    u, v = operands_signed(load_i8x32(codes, (o, b * QK)), simd)
    return u, v, row_scale[o], np.float32(0.0)


@njit(**JIT)
def block_operands_int4(w, o, b, simd):
    codes, group_scale, group_zero = w
    g = b // (codes.shape[1] // (QK // 2) // group_scale.shape[1])          # prefill: once per 4 rows
    d, z = bf16_bits_to_float32(group_scale[o, g]), bf16_bits_to_float32(group_zero[o, g])
    u, v = operands_unsigned(int4_unsigned(codes, o, b), simd)
    return u, v, d, z - np.float32(8.0) * d


@njit(**JIT)
def pair_fma(u, v, xq, xds, n, b, d, acc, simd):
    """acc + (w . x over block b of activation row n) * d * d_x, the w block given as (u, v)."""
    isum = isum_operands(u, v, load_i8x32(xq, (n, b, 0)), simd)
    return fma_i32x8(acc, isum, d * xds[n, b, 0])


@njit(**JIT)
def fast_dot4_simd(w, o, xq, xds, n, simd):
    """Weight row o times activation rows n .. n+3: 4 dot products."""
    a0 = a1 = a2 = a3 = zeros_f32x8()
    m0 = m1 = m2 = m3 = np.float32(0.0)
    for b in range(in_features(w) // QK):
        u, v, d, m = block_operands(w, o, b, simd)
        a0 = pair_fma(u, v, xq, xds, n, b, d, a0, simd)
        a1 = pair_fma(u, v, xq, xds, n + 1, b, d, a1, simd)
        a2 = pair_fma(u, v, xq, xds, n + 2, b, d, a2, simd)
        a3 = pair_fma(u, v, xq, xds, n + 3, b, d, a3, simd)
        m0 += m * xds[n, b, 1]
        m1 += m * xds[n + 1, b, 1]
        m2 += m * xds[n + 2, b, 1]
        m3 += m * xds[n + 3, b, 1]
    return sum_f32x8(a0) + m0, sum_f32x8(a1) + m1, sum_f32x8(a2) + m2, sum_f32x8(a3) + m3


@njit(**JIT)
def fast_dot4_portable(w, o, xq, xds, n, simd):
    """The same 4 dot products one row at a time, in plain loops."""
    return (fast_dot(w, o, xq, xds, n, simd), fast_dot(w, o, xq, xds, n + 1, simd),
            fast_dot(w, o, xq, xds, n + 2, simd), fast_dot(w, o, xq, xds, n + 3, simd))


# --- choosing by the weight arrays' types ---------------------------------------------------------
#
# Each function below is an @overload stub: compiled, its choose_* function picks the implementation
# from the argument types (once per type signature) and the caller inlines it. As Python
# (NUMBA_DISABLE_JIT=1) the same choose_* function picks it from the argument values, per call
# (`as_python`): family() and avx2_marker() read dtypes and ranks, which types and arrays both have.

def family(w) -> str:
    """The format family of a tuple of weight arrays (Numba array types, or NumPy arrays)."""
    kinds = tuple((str(a.dtype), a.ndim) for a in w)
    families = {(("uint8", 3),): "ggml",
                (("int8", 2), ("float32", 1)): "int8",
                (("uint8", 2), ("uint16", 2), ("uint16", 2)): "int4",
                (("uint8", 2), ("float32", 2), ("float32", 1)): "bnb"}
    if kinds not in families:
        raise TypeError(f"no quantized kernel for weight arrays {kinds}")
    return families[kinds]


def vector_marker(simd) -> bool:
    """The fast kernels' marker array (numba_quant.SIMD): True for SIMD vectors (the native level or
    generic LLVM vectors, numba_simd.marker_level), False for the plain loops."""
    return str(simd.dtype) != MARKER_DTYPES["portable"]


def choose_in_features(w):
    per_column = {"ggml": QK, "int8": 1}.get(family(w), 2)       # weights per entry of w[0]'s second axis
    return lambda w: w[0].shape[1] * per_column


@python_when_jit_disabled(as_python(choose_in_features))
def in_features(w):
    """IN, the row length of the matrix stored in w."""


overload(in_features, **CHOOSE)(choose_in_features)


def choose_exact_dot(w, o, x2, n):
    impl = {"ggml": exact_dot_ggml, "int8": exact_dot_int8, "int4": exact_dot_int4,
            "bnb": exact_dot_bnb_avx2 if HAS_AVX2 else exact_dot_bnb}[family(w)]          # chosen when compiling
    return lambda w, o, x2, n: impl(w, o, x2, n)


@python_when_jit_disabled(as_python(choose_exact_dot))
def exact_dot(w, o, x2, n):
    """sum_i x2[n, i] * W[o, i] with W decoded in float32 (any format)."""


overload(exact_dot, **CHOOSE)(choose_exact_dot)


def choose_decode_row(w, o, dst, r):
    impl = {"ggml": decode_row_ggml, "int8": decode_row_int8, "int4": decode_row_int4,
            "bnb": decode_row_bnb}[family(w)]
    return lambda w, o, dst, r: impl(w, o, dst, r)


@python_when_jit_disabled(as_python(choose_decode_row))
def decode_row(w, o, dst, r):
    """dst[r, :IN] = W[o] (any format)."""


overload(decode_row, **CHOOSE)(choose_decode_row)


def choose_fast_dot(w, o, xq, xds, n, simd):
    if not vector_marker(simd):                                   # the marker's dtype: chosen when compiling
        impl = {"ggml": fast_dot_ggml_portable, "int8": fast_dot_int8_portable,
                "int4": fast_dot_int4_portable}[family(w)]
        return lambda w, o, xq, xds, n, simd: impl(w, o, xq, xds, n)
    ggml = fast_dot_ggml_pairs if marker_level(simd) == "avx512-vnni" else fast_dot_ggml_simd
    impl = {"ggml": ggml, "int8": fast_dot_int8_simd, "int4": fast_dot_int4_simd}[family(w)]
    return lambda w, o, xq, xds, n, simd: impl(w, o, xq, xds, n, simd)


@python_when_jit_disabled(as_python(choose_fast_dot))
def fast_dot(w, o, xq, xds, n, simd):
    """Row o of W times activation row n in llama.cpp's integer arithmetic (ggml, int8, int4)."""


overload(fast_dot, **CHOOSE)(choose_fast_dot)


def choose_block_operands(w, o, b, simd):
    impl = {"ggml": block_operands_ggml, "int8": block_operands_int8, "int4": block_operands_int4}[family(w)]
    return lambda w, o, b, simd: impl(w, o, b, simd)


@python_when_jit_disabled(as_python(choose_block_operands))
def block_operands(w, o, b, simd):
    """Block b of weight row o as (u, v, d, m) (any fast format)."""


overload(block_operands, **CHOOSE)(choose_block_operands)


def choose_fast_dot4(w, o, xq, xds, n, simd):
    if vector_marker(simd):
        return lambda w, o, xq, xds, n, simd: fast_dot4_simd(w, o, xq, xds, n, simd)
    return lambda w, o, xq, xds, n, simd: fast_dot4_portable(w, o, xq, xds, n, simd)


@python_when_jit_disabled(as_python(choose_fast_dot4))
def fast_dot4(w, o, xq, xds, n, simd):
    """Row o of W times activation rows n .. n+3 in llama.cpp's arithmetic."""


overload(fast_dot4, **CHOOSE)(choose_fast_dot4)
