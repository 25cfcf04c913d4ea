"""SIMD vectors for the quantized kernels: LLVM vector values and AVX2 instructions in Numba.

Why. Numba's auto-vectoriser turns int8 dot products into widening multiplies
(vpmovsxbd + vpmulld), 4-5x slower than llama.cpp's AVX2 sequence, and it never
emits vpmaddubsw. So the fast kernels spell that sequence out: each `@intrinsic`
below emits one instruction (or one short generic LLVM operation) on an LLVM
vector, and the Numba types I8x16 ... F32x8 carry those vectors between them
as ordinary local variables. Intrinsics are emitted inline, so after LLVM's
optimiser a loop written with them holds its vectors in ymm registers.

    vector   LLVM type        what it holds
    I8x16    <16 x i8>        16 bytes (4-bit codes still packed)
    I8x32    <32 x i8>        32 bytes: codes of one block of 32 weights or activations
    I16x16   <16 x i16>       vpmaddubsw's pair sums
    I32x8    <8 x i32>        vpmaddwd's sums: 8 partial integer dot products
    F32x8    <8 x float>      an accumulator of 8 float32 lanes

Only `sign_i8x32`, `maddubs`, `madd_ones` and `lookup16` are x86 instructions
(`llvm.x86.avx2.*`); the kernels use them only when the CPU has AVX2 (see
HAS_AVX2) and otherwise run plain loops. Everything else here is generic
LLVM that compiles for any CPU. Loads take an index tuple into an array and do
not check bounds: the caller owns that.

fp16: with F16C, `half_to_float32` is one vcvtph2ps. Without it LLVM would call
a runtime helper that Numba's JIT does not link (the process crashes), so CPUs
without F16C get the same conversions written with integer operations.

As Python (NUMBA_DISABLE_JIT=1, docs/debugging.md) an intrinsic cannot run, so
each one has a NumPy twin (`python_when_jit_disabled`): a vector is then a
NumPy array of its lanes (I8x32: int8 [32], F32x8: float32 [8], ...), and the
kernels built from these intrinsics run line by line on any CPU, AVX2 ones
included. A twin computes what the instruction computes (wrapping bytes,
vpmaddubsw's saturation, one rounding per FMA up to float64's) and, unlike the
compiled load, refuses to read past the end of the array's row.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, models, overload, register_model

from .numba_math import FASTMATH, as_python, int32_bits_to_float32, python_when_jit_disabled


def target_features() -> dict:
    """The CPU features Numba compiles for: {'avx2': True, ...} (NUMBA_CPU_FEATURES, else the host's)."""
    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return {f[1:]: f[0] == "+" for f in str(flat).split(",") if f[:1] in "+-" and len(f) > 1}


def target_arch() -> str:
    """The architecture Numba compiles for: 'x86_64', 'aarch64', ... (the process's LLVM triple)."""
    from llvmlite import binding
    arch = binding.get_process_triple().split("-")[0]
    return "aarch64" if arch == "arm64" else arch                # macOS calls it arm64


def simd_level(features: dict, arch: str) -> str:
    """The instruction set the fast kernels' integer dot products compile to (see BLOCK_DOTS)."""
    if arch == "x86_64":
        if features.get("avx512vnni") and features.get("avx512vl"):
            return "avx512-vnni"
        if features.get("avxvnni"):
            return "avx-vnni"
        if features.get("avx2"):
            return "avx2"
    if arch == "aarch64":
        return "neon-dotprod" if features.get("dotprod") else "neon"
    return "vector"


HAS_AVX2 = target_features().get("avx2", False)
HAS_F16C = target_features().get("f16c", False)
SIMD_LEVEL = simd_level(target_features(), target_arch())        # chosen once, for the CPU Numba targets


# --- vector types ----------------------------------------------------------------

LLVM_ELEMENT = {"i8": ir.IntType(8), "i16": ir.IntType(16), "i32": ir.IntType(32), "f32": ir.FloatType()}


class Vector(types.Type):
    """An LLVM vector of `lanes` numbers of one kind ('i8', 'i16', 'i32', 'f32')."""

    def __init__(self, element: str, lanes: int):
        self.element, self.lanes = element, lanes
        super().__init__(name=f"{element}x{lanes}")

    @property
    def llvm(self):
        return ir.VectorType(LLVM_ELEMENT[self.element], self.lanes)


@register_model(Vector)
class VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.llvm)


I8x16, I8x32, I16x16, I32x8, F32x8 = Vector("i8", 16), Vector("i8", 32), Vector("i16", 16), Vector("i32", 8), \
    Vector("f32", 8)
I32 = ir.IntType(32)


def lanes(*values):
    """A constant <n x i32> (shuffle masks)."""
    return ir.Constant(ir.VectorType(I32, len(values)), list(values))


def splat(builder, scalar, vector_type):
    """<n x T> with every lane = scalar."""
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, one, lanes(*[0] * vector_type.count))


def call(builder, name, result, *args):
    """Call the LLVM intrinsic `name` (e.g. llvm.x86.avx2.pmadd.wd) on args."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, [a.type for a in args]), name)
    return builder.call(fn, args)


def element_pointer(context, builder, array_type, array, index_type, index):
    """Address of array[index] (index a tuple of integers), no wraparound or bounds check."""
    ary = context.make_array(array_type)(context, builder, array)
    idx = [context.cast(builder, i, t, types.intp)
           for i, t in zip(cgutils.unpack_tuple(builder, index), index_type)]
    return cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
                                     cgutils.unpack_tuple(builder, ary.strides), array_type.layout, idx,
                                     wraparound=False, boundscheck=False)


def row_bytes(array, index, nbytes):
    """Python twins: the nbytes bytes of array from array[index] on, within its last axis (a copy)."""
    row, start = array[tuple(index[:-1])], index[-1]
    if not 0 <= start or (start + 1) * array.itemsize > row.nbytes or row.strides[0] != array.itemsize:
        raise IndexError(f"vector load/store at {tuple(index)} outside the contiguous row of {array.shape}")
    part = row[start:].view(np.uint8)[:nbytes]
    if part.size < nbytes:
        raise IndexError(f"vector load/store at {tuple(index)}: {nbytes} bytes run past the row of {array.shape}")
    return part.copy()


NUMPY_LANE = {"i8": np.int8, "i16": np.int16, "i32": np.int32, "f32": np.float32}


def load_vector(vector_type):
    """An intrinsic loading vector_type from array[index] (unaligned: vmovdqu / vmovups)."""
    lane = NUMPY_LANE[vector_type.element]

    def load_python(array, index):
        return row_bytes(array, index, vector_type.lanes * np.dtype(lane).itemsize).view(lane)

    @python_when_jit_disabled(load_python)
    @intrinsic
    def load(typingctx, array, index):
        def codegen(context, builder, signature, args):
            ptr = element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
            return builder.load(builder.bitcast(ptr, vector_type.llvm.as_pointer()), align=1)
        return vector_type(array, index), codegen
    return load


load_i8x16 = load_vector(I8x16)    # 16 bytes at array[index]
load_i8x32 = load_vector(I8x32)    # 32 bytes at array[index]
load_f32x8 = load_vector(F32x8)    # 8 float32 at array[index]


def _store_f32x8_python(array, index, value):
    row_bytes(array, index, 32)                                   # the same bounds check
    array[tuple(index[:-1])][index[-1]:index[-1] + 8] = value


@python_when_jit_disabled(_store_f32x8_python)
@intrinsic
def store_f32x8(typingctx, array, index, value):
    """array[index : index+8] = value (float32 array, last axis contiguous)."""
    def codegen(context, builder, signature, args):
        ptr = element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        builder.store(args[2], builder.bitcast(ptr, F32x8.llvm.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(array, index, value), codegen


def _load_u16_python(array, index):
    return row_bytes(array, index, 2).view("<u2")[0].astype(np.uint16)


@python_when_jit_disabled(_load_u16_python)
@intrinsic
def load_u16(typingctx, array, index):
    """The little-endian uint16 at array[index] (a byte array: an fp16 inside a block)."""
    def codegen(context, builder, signature, args):
        ptr = element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load(builder.bitcast(ptr, ir.IntType(16).as_pointer()), align=1)
    return types.uint16(array, index), codegen


# --- byte vectors -----------------------------------------------------------------

def _nibbles_python(packed):
    u = packed.view(np.uint8)
    return np.concatenate([u & 15, u >> 4]).view(np.int8)


@python_when_jit_disabled(_nibbles_python)
@intrinsic
def nibbles(typingctx, packed):
    """16 bytes -> 32: [b & 15 for each b] + [b >> 4 for each b]  (GGUF's order: j, j+16).
    Emits vpsrlw, vinserti128, vpand, like llama.cpp's bytes_from_nibbles_32."""
    def codegen(context, builder, signature, args):
        v = args[0]
        low = builder.and_(v, ir.Constant(I8x16.llvm, [0x0F] * 16))
        high = builder.lshr(v, ir.Constant(I8x16.llvm, [4] * 16))
        return builder.shuffle_vector(low, high, lanes(*range(32)))
    return I8x32(I8x16), codegen


def _nibbles_interleaved_python(packed):
    u = packed.view(np.uint8)
    return np.stack([u & 15, u >> 4], axis=1).reshape(32).view(np.int8)


@python_when_jit_disabled(_nibbles_interleaved_python)
@intrinsic
def nibbles_interleaved(typingctx, packed):
    """16 bytes -> 32: [b0 & 15, b0 >> 4, b1 & 15, b1 >> 4, ...]  (torchao's order: 2i, 2i+1)."""
    def codegen(context, builder, signature, args):
        v = args[0]
        low = builder.and_(v, ir.Constant(I8x16.llvm, [0x0F] * 16))
        high = builder.lshr(v, ir.Constant(I8x16.llvm, [4] * 16))
        return builder.shuffle_vector(low, high, lanes(*[j // 2 + 16 * (j % 2) for j in range(32)]))
    return I8x32(I8x16), codegen


def _ones_i8x32_python():
    return np.ones(32, dtype=np.int8)


@python_when_jit_disabled(_ones_i8x32_python)
@intrinsic
def ones_i8x32(typingctx):
    """32 bytes of 1: as the second operand of vpsignb it leaves the first unchanged."""
    def codegen(context, builder, signature, args):
        return ir.Constant(I8x32.llvm, [1] * 32)
    return I8x32(), codegen


def _eights_i8x32_python():
    return np.full(32, 8, dtype=np.int8)


@python_when_jit_disabled(_eights_i8x32_python)
@intrinsic
def eights_i8x32(typingctx):
    """32 bytes of 8."""
    def codegen(context, builder, signature, args):
        return ir.Constant(I8x32.llvm, [8] * 32)
    return I8x32(), codegen


def _zeros_i8x32_python():
    return np.zeros(32, dtype=np.int8)


@python_when_jit_disabled(_zeros_i8x32_python)
@intrinsic
def zeros_i8x32(typingctx):
    """32 bytes of 0."""
    def codegen(context, builder, signature, args):
        return ir.Constant(I8x32.llvm, [0] * 32)
    return I8x32(), codegen


def _add_i8x32_python(v, c):
    return (v.view(np.uint8) + np.uint8(int(c) & 0xFF)).view(np.int8)        # wraps like the bytes do


@python_when_jit_disabled(_add_i8x32_python)
@intrinsic
def add_i8x32(typingctx, v, c):
    """v[j] + c (wrapping bytes; c an integer constant or variable). q4_0: n - 8."""
    def codegen(context, builder, signature, args):
        return builder.add(args[0], splat(builder, builder.trunc(args[1], ir.IntType(8)), I8x32.llvm))
    return I8x32(I8x32, c), codegen


def _xor_i8x32_python(v, c):
    return (v.view(np.uint8) ^ np.uint8(int(c) & 0xFF)).view(np.int8)


@python_when_jit_disabled(_xor_i8x32_python)
@intrinsic
def xor_i8x32(typingctx, v, c):
    """v[j] ^ c. int4: a signed nibble s (q & 15) becomes q + 8 = s ^ 8."""
    def codegen(context, builder, signature, args):
        return builder.xor(args[0], splat(builder, builder.trunc(args[1], ir.IntType(8)), I8x32.llvm))
    return I8x32(I8x32, c), codegen


def _nibbles_high_first_python(array, index):
    u = row_bytes(array, index, 4).astype(np.int32)
    return np.stack([u >> 4, u & 15], axis=1).reshape(8)


@python_when_jit_disabled(_nibbles_high_first_python)
@intrinsic
def nibbles_high_first(typingctx, array, index):
    """The 4 bytes at array[index] as 8 codes, int32 lanes, HIGH nibble first (bitsandbytes' order):
    [b0 >> 4, b0 & 15, b1 >> 4, b1 & 15, ...] (vpmovzxbd, vpsrlvd, vpand)."""
    def codegen(context, builder, signature, args):
        ptr = element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        four = builder.load(builder.bitcast(ptr, ir.VectorType(ir.IntType(8), 4).as_pointer()), align=1)
        wide = builder.zext(builder.shuffle_vector(four, four, lanes(0, 0, 1, 1, 2, 2, 3, 3)), I32x8.llvm)
        shifted = builder.lshr(wide, ir.Constant(I32x8.llvm, [4, 0] * 4))
        return builder.and_(shifted, ir.Constant(I32x8.llvm, [15] * 8))
    return I32x8(array, index), codegen


# --- x86 instructions of the integer dot product (llama.cpp's sequences) -----------------

def _sign_i8x32_python(a, b):
    return np.where(b < 0, -a, np.where(b == 0, np.int8(0), a)).astype(np.int8)    # -(-128) wraps to -128


@python_when_jit_disabled(_sign_i8x32_python)
@intrinsic
def sign_i8x32(typingctx, a, b):
    """vpsignb: a[j] * sign(b[j]) (0 where b[j] == 0). sign(x, x) = |x| makes a signed
    operand unsigned for vpmaddubsw; sign(y, x) moves x's sign onto y, so |x| * sign(y, x) = x * y."""
    def codegen(context, builder, signature, args):
        return call(builder, "llvm.x86.avx2.psign.b", I8x32.llvm, args[0], args[1])
    return I8x32(I8x32, I8x32), codegen


def _maddubs_python(u, s):
    p = u.view(np.uint8).astype(np.int32) * s.view(np.int8).astype(np.int32)
    return np.clip(p[0::2] + p[1::2], -32768, 32767).astype(np.int16)


@python_when_jit_disabled(_maddubs_python)
@intrinsic
def maddubs(typingctx, u, s):
    """vpmaddubsw: u unsigned bytes times s signed bytes, adjacent products summed to int16:
    out[k] = u[2k]*s[2k] + u[2k+1]*s[2k+1] (saturating; with |s| <= 127 and u <= 128 it never does)."""
    def codegen(context, builder, signature, args):
        return call(builder, "llvm.x86.avx2.pmadd.ub.sw", I16x16.llvm, args[0], args[1])
    return I16x16(I8x32, I8x32), codegen


def _madd_ones_python(v):
    w = v.astype(np.int32)
    return w[0::2] + w[1::2]


@python_when_jit_disabled(_madd_ones_python)
@intrinsic
def madd_ones(typingctx, v):
    """vpmaddwd with ones: out[k] = v[2k] + v[2k+1] as int32 (8 partial dot products)."""
    def codegen(context, builder, signature, args):
        ones = ir.Constant(I16x16.llvm, [1] * 16)
        return call(builder, "llvm.x86.avx2.pmadd.wd", I32x8.llvm, args[0], ones)
    return I32x8(I16x16), codegen


def _sums_of_four_python(u, s, u_signed=False):
    p = u.view(np.int8 if u_signed else np.uint8).astype(np.int32) * s.view(np.int8).astype(np.int32)
    return p.reshape(8, 4).sum(axis=1).astype(np.int32)


@python_when_jit_disabled(_sums_of_four_python)
@intrinsic
def dpbusd(typingctx, u, s):
    """vpdpbusd (AVX512-VNNI with VL, or AVX-VNNI): out[k] = u[4k]*s[4k] + ... + u[4k+3]*s[4k+3],
    u unsigned and s signed bytes, in int32 without saturation: vpmaddubsw and vpmaddwd in one.
    Only for CPUs that have it (SIMD_LEVEL): LLVM cannot lower it for any other."""
    def codegen(context, builder, signature, args):
        zero = ir.Constant(I32x8.llvm, [0] * 8)
        u, s = (builder.bitcast(a, I32x8.llvm) for a in args)
        return call(builder, "llvm.x86.avx512.vpdpbusd.256", I32x8.llvm, zero, u, s)
    return I32x8(I8x32, I8x32), codegen


# --- the same sums in generic LLVM, for every other CPU -----------------------------------

def partial_dot(builder, acc, a, b):
    """acc + a . b: 32 signed byte products (sext, mul) added into the 8 int32 lanes of acc by
    llvm.vector.partial.reduce.add, which leaves to the backend which products go to which lane."""
    wide = ir.VectorType(I32, 32)
    products = builder.mul(builder.sext(a, wide), builder.sext(b, wide))
    return call(builder, "llvm.vector.partial.reduce.add.v8i32.v32i32", I32x8.llvm, acc, products)


def _vector_isum_python(a, b):
    return _sums_of_four_python(a, b, u_signed=True)


@python_when_jit_disabled(_vector_isum_python)
@intrinsic
def vector_isum(typingctx, a, b):
    """a . b for 32 signed bytes into 8 int32 lanes, in generic LLVM (partial_dot), so the backend
    picks each CPU's instructions: AArch64 with the dot-product extension gets sdot (two per block),
    plain NEON smull/sadalp, x86 without AVX2 pmaddwd. Only the lanes' total is defined, and that
    is all the kernels use (the twin adds groups of 4, as sdot does)."""
    def codegen(context, builder, signature, args):
        return partial_dot(builder, ir.Constant(I32x8.llvm, [0] * 8), args[0], args[1])
    return I32x8(I8x32, I8x32), codegen


def _vector_isum_pair_python(u, v, b):
    return _sums_of_four_python(u, b, u_signed=True) + _sums_of_four_python(v, b, u_signed=True)


@python_when_jit_disabled(_vector_isum_pair_python)
@intrinsic
def vector_isum_pair(typingctx, u, v, b):
    """u . b + v . b (signed bytes), two partial_dots into one set of lanes."""
    def codegen(context, builder, signature, args):
        u, v, b = args
        return partial_dot(builder, partial_dot(builder, ir.Constant(I32x8.llvm, [0] * 8), v, b), u, b)
    return I32x8(I8x32, I8x32, I8x32), codegen


def _lookup16_python(low, high, codes):
    return np.where(codes.view(np.uint32) > 7, high[codes & 7], low[codes & 7])


@python_when_jit_disabled(_lookup16_python)
@intrinsic
def lookup16(typingctx, low, high, codes):
    """[table[c] for c in codes]: a 16-entry float32 table given as its halves low = table[0:8],
    high = table[8:16], codes 0..15 (vpermps on each half, then vblendvps on bit 3)."""
    def codegen(context, builder, signature, args):
        low, high, codes = args
        from_low = call(builder, "llvm.x86.avx2.permps", F32x8.llvm, low, codes)
        from_high = call(builder, "llvm.x86.avx2.permps", F32x8.llvm, high, codes)
        upper = builder.icmp_unsigned(">", codes, ir.Constant(I32x8.llvm, [7] * 8))
        return builder.select(upper, from_high, from_low)
    return F32x8(F32x8, F32x8, I32x8), codegen


# --- float vectors ------------------------------------------------------------------

def fused_multiply_add(a, b, c):
    """Python twins: a * b + c for float32 arrays with one rounding, as vfmadd: the float32 product
    is exact in float64, so only the float64 sum's rounding comes before float32's."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def zeros_vector(vector_type):
    """An intrinsic returning vector_type with every lane 0 (an accumulator; vxorps)."""
    lane = NUMPY_LANE[vector_type.element]

    def zeros_python():
        return np.zeros(vector_type.lanes, dtype=lane)

    @python_when_jit_disabled(zeros_python)
    @intrinsic
    def zeros(typingctx):
        def codegen(context, builder, signature, args):
            return ir.Constant(vector_type.llvm, [0] * vector_type.lanes)
        return vector_type(), codegen
    return zeros


def lanewise(vector_type, numpy_op, llvm_op: str):
    """An intrinsic applying a binary operation lane by lane: builder.<llvm_op> (add, sub, fadd, fmul)."""
    lane = NUMPY_LANE[vector_type.element]

    def lanewise_python(a, b):
        return numpy_op(a, b).astype(lane)

    @python_when_jit_disabled(lanewise_python)
    @intrinsic
    def apply(typingctx, a, b):
        def codegen(context, builder, signature, args):
            return getattr(builder, llvm_op)(args[0], args[1])
        return vector_type(vector_type, vector_type), codegen
    return apply


zeros_f32x8 = zeros_vector(F32x8)


def _fma_i32x8_python(acc, v, scale):
    return fused_multiply_add(v.astype(np.float32), np.float32(scale), acc)


@python_when_jit_disabled(_fma_i32x8_python)
@intrinsic
def fma_i32x8(typingctx, acc, v, scale):
    """acc + float(v) * scale, lane by lane (vcvtdq2ps, vfmadd231ps): one block's
    integer sums times its d_w * d_x, added to the row's accumulator."""
    def codegen(context, builder, signature, args):
        acc, v, scale = args
        product = builder.sitofp(v, F32x8.llvm)
        return call(builder, "llvm.fma.v8f32", F32x8.llvm, product, splat(builder, scale, F32x8.llvm), acc)
    return F32x8(F32x8, I32x8, types.float32), codegen


def _fma_f32x8_python(a, b, acc):
    return fused_multiply_add(a, b, acc)


@python_when_jit_disabled(_fma_f32x8_python)
@intrinsic
def fma_f32x8(typingctx, a, b, acc):
    """acc + a * b, lane by lane (vfmadd231ps)."""
    def codegen(context, builder, signature, args):
        return call(builder, "llvm.fma.v8f32", F32x8.llvm, args[0], args[1], args[2])
    return F32x8(F32x8, F32x8, F32x8), codegen


def _add_f32x8_python(a, b):
    return a + b


@python_when_jit_disabled(_add_f32x8_python)
@intrinsic
def add_f32x8(typingctx, a, b):
    """a + b, lane by lane (vaddps)."""
    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1])
    return F32x8(F32x8, F32x8), codegen


def _scale_python(v, d):
    return v * np.float32(d)


@python_when_jit_disabled(_scale_python)
@intrinsic
def scale(typingctx, v, d):
    """v * d, lane by lane (vmulps)."""
    def codegen(context, builder, signature, args):
        return builder.fmul(args[0], splat(builder, args[1], F32x8.llvm))
    return F32x8(F32x8, types.float32), codegen


def _scale_add_python(v, d, m):
    return v * np.float32(d) + np.float32(m)


@python_when_jit_disabled(_scale_add_python)
@intrinsic
def scale_add(typingctx, v, d, m):
    """v * d + m, lane by lane, rounded after the product and after the sum like the
    NumPy decode (no fused multiply-add), so decoded weights are bit-identical to it."""
    def codegen(context, builder, signature, args):
        v, d, m = args
        return builder.fadd(builder.fmul(v, splat(builder, d, F32x8.llvm)), splat(builder, m, F32x8.llvm))
    return F32x8(F32x8, types.float32, types.float32), codegen


def _sum_f32x8_python(v):
    s4 = v[:4] + v[4:]
    s2 = s4[:2] + s4[2:]
    return s2[0] + s2[1]


@python_when_jit_disabled(_sum_f32x8_python)
@intrinsic
def sum_f32x8(typingctx, v):
    """v[0] + ... + v[7] as llama.cpp's hsum_float_8: halves added until one lane is left."""
    def codegen(context, builder, signature, args):
        v = args[0]
        s4 = builder.fadd(builder.shuffle_vector(v, v, lanes(0, 1, 2, 3)),
                          builder.shuffle_vector(v, v, lanes(4, 5, 6, 7)))
        s2 = builder.fadd(builder.shuffle_vector(s4, s4, lanes(0, 1)), builder.shuffle_vector(s4, s4, lanes(2, 3)))
        return builder.fadd(builder.extract_element(s2, ir.Constant(I32, 0)),
                            builder.extract_element(s2, ir.Constant(I32, 1)))
    return types.float32(F32x8), codegen


def widen_bytes(signed: bool):
    """An intrinsic: 32 bytes -> 4 x F32x8 (elements 0-7, 8-15, 16-23, 24-31) as float32
    (vpmovzxbd or vpmovsxbd, then vcvtdq2ps)."""
    def widen_python(v):
        f = v.view(np.int8 if signed else np.uint8).astype(np.float32)
        return f[0:8], f[8:16], f[16:24], f[24:32]

    @python_when_jit_disabled(widen_python)
    @intrinsic
    def widen(typingctx, v):
        def codegen(context, builder, signature, args):
            wide_type = ir.VectorType(I32, 32)
            wide = builder.sext(args[0], wide_type) if signed else builder.zext(args[0], wide_type)
            floats = builder.sitofp(wide, ir.VectorType(ir.FloatType(), 32))
            parts = [builder.shuffle_vector(floats, floats, lanes(*range(8 * p, 8 * p + 8))) for p in range(4)]
            return context.make_tuple(builder, signature.return_type, parts)
        return types.UniTuple(F32x8, 4)(I8x32), codegen
    return widen


widen_u8 = widen_bytes(signed=False)     # codes 0..255 (nibbles) -> float32
widen_i8 = widen_bytes(signed=True)      # codes -128..127 -> float32


# --- fp16 <-> float32 -------------------------------------------------------------------

def _f16c_half_to_float32_python(bits):
    return np.float32(np.uint16(bits).view(np.float16))


@python_when_jit_disabled(_f16c_half_to_float32_python)
@intrinsic
def f16c_half_to_float32(typingctx, bits):
    """fp16 bits -> float32, exact (vcvtph2ps; needs F16C)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


def _f16c_round_to_half_python(x):
    return np.float32(np.float16(np.float32(x)))                     # NumPy rounds to nearest even


@python_when_jit_disabled(_f16c_round_to_half_python)
@intrinsic
def f16c_round_to_half(typingctx, x):
    """float32 -> the nearest fp16 (ties to even), back as float32 (vcvtps2ph, vcvtph2ps)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.float32), codegen


def _float32_bits_python(x):
    return np.float32(x).view(np.int32)


@python_when_jit_disabled(_float32_bits_python)
@intrinsic
def float32_bits(typingctx, x):
    """The 32 bits of a float32 as an int32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@njit(error_model="numpy", inline="always", cache=True)
def portable_half_to_float32(bits):
    """fp16 bits -> float32 with integer operations: shifted into a float32, the exponent is
    2^112 too small for normals and subnormals alike, so one exact multiply fixes it."""
    h = np.int32(bits)
    sign = (h & 0x8000) << 16
    magnitude = h & 0x7FFF
    if magnitude >= 0x7C00:                                       # inf, nan: keep the payload
        return int32_bits_to_float32(sign | 0x7F800000 | ((magnitude & 0x3FF) << 13))
    value = int32_bits_to_float32(magnitude << 13) * np.float32(5.192296858534828e+33)   # 2^112
    return -value if sign else value


@njit(error_model="numpy", inline="always", cache=True)
def portable_round_to_half(x):
    """float32 -> the nearest fp16 value (ties to even), as float32, with integer operations."""
    a = abs(x)
    if not a < np.float32(65520.0):                               # overflows to inf (or nan stays nan)
        r = a if a != a else np.float32(np.inf)
    elif a < np.float32(6.103515625e-05):                         # fp16 subnormal: a multiple of 2^-24
        r = np.float32(np.rint(a * np.float32(16777216.0))) * np.float32(5.960464477539063e-08)
    else:                                                         # drop 13 mantissa bits, ties to even
        b = float32_bits(a)
        b = (b + 0xFFF + ((b >> 13) & 1)) & ~np.int32(0x1FFF)
        r = int32_bits_to_float32(b)
    return -r if float32_bits(x) < 0 else r                       # -0.0 stays -0.0


if HAS_F16C:
    half_to_float32, round_to_half = f16c_half_to_float32, f16c_round_to_half
else:
    half_to_float32, round_to_half = portable_half_to_float32, portable_round_to_half


@njit(error_model="numpy", inline="always", cache=True)
def load_half(array, index):
    """The fp16 stored at array[index] (a byte array) as float32."""
    return half_to_float32(load_u16(array, index))


# --- two blocks per step in 512-bit registers (AVX-512 VNNI) ---------------------------------------
#
# A 4-bit block is 16 bytes of codes, so one block per instruction leaves half of a ymm register's
# work to unpacking and per-block scale handling. With 512-bit registers the q4 kernels take two
# blocks per step: one vpdpbusd over 64 bytes, one vcvtdq2ps and one vfmadd for both blocks, the
# two scales side by side in one register. AVX-512 has no vpsignb, so codes go in unsigned
# (n = 0..15) and q4_0's (n - 8) . x is computed as n . x - 8 . x (two vpdpbusd, both exact).

I8x64, I32x16, F32x16 = Vector("i8", 64), Vector("i32", 16), Vector("f32", 16)


def _load_two_blocks_python(array, index):
    n, b, start = index
    if start != 0 or b + 2 > array.shape[1]:
        raise IndexError(f"two-block load at {tuple(index)} outside {array.shape}")
    return np.ascontiguousarray(array[n, b:b + 2]).reshape(-1).view(np.int8)


@python_when_jit_disabled(_load_two_blocks_python)
@intrinsic
def load_two_blocks(typingctx, array, index):
    """The 64 bytes of blocks b and b+1 of a C-contiguous int8 array [N, blocks, 32] from array[n, b, 0]."""
    def codegen(context, builder, signature, args):
        ptr = element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load(builder.bitcast(ptr, I8x64.llvm.as_pointer()), align=1)
    return I8x64(array, index), codegen


def _nibbles_pair_python(a, b):
    return np.concatenate([_nibbles_python(a), _nibbles_python(b)])


@python_when_jit_disabled(_nibbles_pair_python)
@intrinsic
def nibbles_pair(typingctx, a, b):
    """The packed codes of two blocks (16 bytes each) -> 64 bytes: nibbles(a) then nibbles(b)."""
    def codegen(context, builder, signature, args):
        both = builder.shuffle_vector(args[0], args[1], lanes(*range(32)))        # a's 16 bytes, b's 16
        low = builder.and_(both, ir.Constant(I8x32.llvm, [0x0F] * 32))
        high = builder.lshr(both, ir.Constant(I8x32.llvm, [4] * 32))
        order = [*range(16), *range(32, 48), *range(16, 32), *range(48, 64)]      # a low, a high, b low, b high
        return builder.shuffle_vector(low, high, lanes(*order))
    return I8x64(I8x16, I8x16), codegen


def _dpbusd_x2_python(u, s):
    return np.concatenate([_sums_of_four_python(u[:32], s[:32]), _sums_of_four_python(u[32:], s[32:])])


@python_when_jit_disabled(_dpbusd_x2_python)
@intrinsic
def dpbusd_x2(typingctx, u, s):
    """vpdpbusd on zmm: 16 int32 sums of four u (unsigned) x s (signed) byte products; lanes 0-7
    hold the first block's dot product, 8-15 the second's. AVX-512 VNNI only."""
    def codegen(context, builder, signature, args):
        zero = ir.Constant(I32x16.llvm, [0] * 16)
        u, s = (builder.bitcast(a, I32x16.llvm) for a in args)
        return call(builder, "llvm.x86.avx512.vpdpbusd.512", I32x16.llvm, zero, u, s)
    return I32x16(I8x64, I8x64), codegen


def _eights_i8x64_python():
    return np.full(64, 8, dtype=np.int8)


@python_when_jit_disabled(_eights_i8x64_python)
@intrinsic
def eights_i8x64(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(I8x64.llvm, [8] * 64)
    return I8x64(), codegen


F32x4 = Vector("f32", 4)


def _load_scale_pair_python(blocks, index_a, index_b):
    first = [row_bytes(blocks, i, 4).view("<f2").astype(np.float32) for i in (index_a, index_b)]
    return np.concatenate(first)


@python_when_jit_disabled(_load_scale_pair_python)
@intrinsic
def load_scale_pair(typingctx, blocks, index_a, index_b):
    """The first two fp16 of two blocks as float32 [a0, a1, b0, b1] (q4_1: d, m of each; q4_0: d and
    two code bytes, unused): two 32-bit loads and one vcvtph2ps."""
    def codegen(context, builder, signature, args):
        halves = []
        for index, index_type in ((args[1], signature.args[1]), (args[2], signature.args[2])):
            ptr = element_pointer(context, builder, signature.args[0], args[0], index_type, index)
            pair = ir.VectorType(ir.IntType(16), 2)
            halves.append(builder.load(builder.bitcast(ptr, pair.as_pointer()), align=1))
        four = builder.shuffle_vector(halves[0], halves[1], lanes(0, 1, 2, 3))
        return builder.fpext(builder.bitcast(four, ir.VectorType(ir.HalfType(), 4)), F32x4.llvm)
    return F32x4(blocks, index_a, index_b), codegen


def _load_two_rows_f32x4_python(array, index):
    n, b, start = index
    if start != 0 or array.shape[2] != 2 or b + 2 > array.shape[1]:
        raise IndexError(f"two-row load at {tuple(index)} outside {array.shape}")
    return np.ascontiguousarray(array[n, b:b + 2]).reshape(-1)


@python_when_jit_disabled(_load_two_rows_f32x4_python)
@intrinsic
def load_two_rows_f32x4(typingctx, array, index):
    """[d, s] of activation blocks b and b+1 from a C-contiguous float32 array [N, blocks, 2]: 4 floats."""
    def codegen(context, builder, signature, args):
        ptr = element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load(builder.bitcast(ptr, F32x4.llvm.as_pointer()), align=1)
    return F32x4(array, index), codegen


def _odd_lanes_sum_python(v):
    return np.float32(v[1] + v[3])


@python_when_jit_disabled(_odd_lanes_sum_python)
@intrinsic
def odd_lanes_sum(typingctx, v):
    """v[1] + v[3] (q4_1: the two blocks' m * s terms)."""
    def codegen(context, builder, signature, args):
        v = args[0]
        return builder.fadd(builder.extract_element(v, ir.Constant(I32, 1)),
                            builder.extract_element(v, ir.Constant(I32, 3)))
    return types.float32(F32x4), codegen


zeros_f32x16, zeros_f32x4 = zeros_vector(F32x16), zeros_vector(F32x4)
sub_i32x16 = lanewise(I32x16, np.subtract, "sub")          # vpsubd
add_f32x4 = lanewise(F32x4, np.add, "fadd")                # vaddps
mul_f32x4 = lanewise(F32x4, np.multiply, "fmul")           # vmulps


def _fma_pair_python(acc, v, scales):
    return fused_multiply_add(v.astype(np.float32), np.repeat(scales[[0, 2]], 8), acc)


@python_when_jit_disabled(_fma_pair_python)
@intrinsic
def fma_pair(typingctx, acc, v, scales):
    """acc + float(v) * [scales[0] x 8, scales[2] x 8] (vcvtdq2ps, vpermps, vfmadd231ps): two blocks'
    integer sums times their d_w * d_x, which load_scale_pair * load_two_rows_f32x4 put in lanes 0, 2."""
    def codegen(context, builder, signature, args):
        acc, v, scales = args
        spread = builder.shuffle_vector(scales, scales, lanes(*[0] * 8, *[2] * 8))
        return call(builder, "llvm.fma.v16f32", F32x16.llvm, builder.sitofp(v, F32x16.llvm), spread, acc)
    return F32x16(F32x16, I32x16, F32x4), codegen


def _sum_f32x16_python(v):
    return _sum_f32x8_python(v[:8] + v[8:])


@python_when_jit_disabled(_sum_f32x16_python)
@intrinsic
def sum_f32x16(typingctx, v):
    """v[0] + ... + v[15]: the two halves added, then as sum_f32x8."""
    def codegen(context, builder, signature, args):
        v = args[0]
        s8 = builder.fadd(builder.shuffle_vector(v, v, lanes(*range(8))), builder.shuffle_vector(v, v, lanes(*range(8, 16))))
        s4 = builder.fadd(builder.shuffle_vector(s8, s8, lanes(0, 1, 2, 3)), builder.shuffle_vector(s8, s8, lanes(4, 5, 6, 7)))
        s2 = builder.fadd(builder.shuffle_vector(s4, s4, lanes(0, 1)), builder.shuffle_vector(s4, s4, lanes(2, 3)))
        return builder.fadd(builder.extract_element(s2, ir.Constant(I32, 0)),
                            builder.extract_element(s2, ir.Constant(I32, 1)))
    return types.float32(F32x16), codegen


# --- the integer dot product of a block, per instruction set --------------------------------------
#
# A fast kernel multiplies a block of 32 int8 weight codes by 32 int8 activation codes and wants the
# sum; every level below returns it as 8 int32 lanes whose total is that sum. The level is chosen
# when compiling, from the CPU Numba targets (SIMD_LEVEL), or forced by the kernels' marker array:
#
#   level                 instructions per block                       as in llama.cpp
#   avx512-vnni, avx-vnni vpsignb x2, vpdpbusd (256-bit)               __AVX512VNNI__ && __AVX512VL__, __AVXVNNI__
#   avx2                  vpsignb x2, vpmaddubsw, vpmaddwd             mul_sum_i8_pairs_float
#   neon-dotprod, neon,   sext, mul, llvm.vector.partial.reduce.add:   ggml_vdotq_s32 (sdot)
#   vector                LLVM lowers it: sdot x2 with the AArch64 dot-product extension,
#                         smull + sadalp on plain NEON, pmaddwd on x86 without AVX2
#
# x86 multiplies unsigned by signed bytes, so signed weight codes go in as |w| with w's sign moved
# onto the activations (vpsignb); codes 0..15 (q4_1, int4) go in as they are. For prefill, where
# one weight block meets 4 activation rows, `operands_*` prepare the weight side once and
# `isum_operands` finishes each row: (u, v) = (|w|, w) or (w, ones) on x86; elsewhere the sum is
# u . x + v . x with (u, v) = (w, 0) or (w - 8, 8) (see isum_unsigned_vector).

JIT = dict(error_model="numpy", fastmath=FASTMATH, inline="always", cache=True)
CHOOSE = dict(jit_options=dict(error_model="numpy", fastmath=FASTMATH), inline="always")


@njit(**JIT)
def isum_signed_avx2(a, b):
    return madd_ones(maddubs(sign_i8x32(a, a), sign_i8x32(b, a)))


@njit(**JIT)
def isum_signed_vnni(a, b):
    return dpbusd(sign_i8x32(a, a), sign_i8x32(b, a))


@njit(**JIT)
def isum_unsigned_avx2(u, b):
    return madd_ones(maddubs(u, b))


@njit(**JIT)
def isum_unsigned_vnni(u, b):
    return dpbusd(u, b)


@njit(**JIT)
def isum_unsigned_vector(u, b):
    """u . b as (u - 8) . b + 8 . b: LLVM knows codes 0..15 are not negative and would multiply them
    as unsigned bytes, which AArch64 does in one instruction only with the i8mm extension (usdot);
    codes - 8 are signed, so both halves stay sdot."""
    return vector_isum_pair(add_i8x32(u, -8), eights_i8x32(), b)


@njit(**JIT)
def operands_signed_x86(c):
    return sign_i8x32(c, c), c


@njit(**JIT)
def operands_unsigned_x86(c):
    return c, ones_i8x32()


@njit(**JIT)
def operands_signed_vector(c):
    return c, zeros_i8x32()                     # LLVM drops the product with zeros


@njit(**JIT)
def operands_unsigned_vector(c):
    return add_i8x32(c, -8), eights_i8x32()     # as isum_unsigned_vector


@njit(**JIT)
def isum_operands_avx2(u, v, x):
    return madd_ones(maddubs(u, sign_i8x32(x, v)))


@njit(**JIT)
def isum_operands_vnni(u, v, x):
    return dpbusd(u, sign_i8x32(x, v))


@njit(**JIT)
def isum_operands_vector(u, v, x):
    return vector_isum_pair(u, v, x)


class BlockDot:
    """One level's functions: signed(a, b), unsigned(u, b) (u = 0..15), operands_signed(c),
    operands_unsigned(c) -> (u, v), and pair(u, v, x): each -> I32x8 lanes summing to the block's dot."""

    def __init__(self, signed, unsigned, operands_signed, operands_unsigned, pair):
        self.signed, self.unsigned, self.pair = signed, unsigned, pair
        self.operands_signed, self.operands_unsigned = operands_signed, operands_unsigned


AVX2 = BlockDot(isum_signed_avx2, isum_unsigned_avx2, operands_signed_x86, operands_unsigned_x86, isum_operands_avx2)
VNNI = BlockDot(isum_signed_vnni, isum_unsigned_vnni, operands_signed_x86, operands_unsigned_x86, isum_operands_vnni)
VECTOR = BlockDot(vector_isum, isum_unsigned_vector, operands_signed_vector, operands_unsigned_vector,
                  isum_operands_vector)
BLOCK_DOTS = {"avx512-vnni": VNNI, "avx-vnni": VNNI, "avx2": AVX2, "neon-dotprod": VECTOR, "neon": VECTOR,
              "vector": VECTOR}

# The fast kernels' marker array: its dtype picks the code when compiling (one compiled kernel each).
MARKER_DTYPES = {"native": "uint8", "vector": "int16", "portable": "int8"}


def marker_level(simd) -> str:
    """The level a marker array compiles to: 'native' is SIMD_LEVEL; 'portable' (plain loops) has none."""
    kind = {dtype: name for name, dtype in MARKER_DTYPES.items()}[str(simd.dtype)]
    return SIMD_LEVEL if kind == "native" else kind


def block_dot(simd) -> BlockDot:
    return BLOCK_DOTS[marker_level(simd)]


def choose_isum_signed(a, b, simd):
    impl = block_dot(simd).signed
    return lambda a, b, simd: impl(a, b)


def choose_isum_unsigned(u, b, simd):
    impl = block_dot(simd).unsigned
    return lambda u, b, simd: impl(u, b)


def choose_operands_signed(c, simd):
    impl = block_dot(simd).operands_signed
    return lambda c, simd: impl(c)


def choose_operands_unsigned(c, simd):
    impl = block_dot(simd).operands_unsigned
    return lambda c, simd: impl(c)


def choose_isum_operands(u, v, x, simd):
    impl = block_dot(simd).pair
    return lambda u, v, x, simd: impl(u, v, x)


@python_when_jit_disabled(as_python(choose_isum_signed))
def isum_signed(a, b, simd):
    """a . b over 32 signed bytes as 8 int32 lanes (a may hold -128, b may not)."""


@python_when_jit_disabled(as_python(choose_isum_unsigned))
def isum_unsigned(u, b, simd):
    """u . b over 32 bytes, u codes 0..15, b signed, as 8 int32 lanes."""


@python_when_jit_disabled(as_python(choose_operands_signed))
def operands_signed(c, simd):
    """A block of signed weight codes as (u, v) for isum_operands."""


@python_when_jit_disabled(as_python(choose_operands_unsigned))
def operands_unsigned(c, simd):
    """A block of weight codes 0..15 as (u, v) for isum_operands."""


@python_when_jit_disabled(as_python(choose_isum_operands))
def isum_operands(u, v, x, simd):
    """w . x over a block, w given as operands (u, v), x 32 signed activation bytes: 8 int32 lanes."""


overload(isum_signed, **CHOOSE)(choose_isum_signed)
overload(isum_unsigned, **CHOOSE)(choose_isum_unsigned)
overload(operands_signed, **CHOOSE)(choose_operands_signed)
overload(operands_unsigned, **CHOOSE)(choose_operands_unsigned)
overload(isum_operands, **CHOOSE)(choose_isum_operands)
