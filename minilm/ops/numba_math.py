"""Scalar helpers shared by the Numba kernels: fast-math flags, bit casts, a vectorisable exp.

LLVM vectorises loops that use these. Numba has no SVML here, so np.exp in a
loop is one libm call per element, ~10x slower than exp_f32 below. Kernels
use error_model="numpy": a float division by zero gives inf/nan as in NumPy,
instead of a ZeroDivisionError check that would also stop vectorisation.

Stepping through a kernel: with NUMBA_DISABLE_JIT=1 every @njit function runs as
plain Python (pdb, VS Code breakpoints), but an @intrinsic or an @overload
exists only inside compiled code. Each of them therefore has a NumPy twin,
chosen by `python_when_jit_disabled`; the quantized kernels' intrinsics and
stubs (numba_simd.py, numba_quant_rows.py) use the same decorator for theirs.
tests/test_numba_jit_disabled.py runs every kernel both ways (docs/debugging.md).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# Reassociation lets LLVM vectorise float sums; no nnan/ninf, because masks use -inf.
FASTMATH = {"reassoc", "contract", "nsz"}


def python_when_jit_disabled(python_version):
    """Decorator for an @intrinsic or an @overload stub: under NUMBA_DISABLE_JIT=1 the name is bound to
    `python_version` (same values, in NumPy), so kernels that call it still run as Python."""
    def choose(compiled):
        return python_version if numba.config.DISABLE_JIT else compiled
    return choose


def as_python(choose):
    """The Python twin of an @overload stub whose choose(*arguments) picks an implementation from the
    argument types: call what choose picks for these values (dtypes and ranks read the same on both)."""
    def run_chosen(*args):
        return choose(*args)(*args)
    return run_chosen


def _bf16_bits_to_float32_python(bits):
    return (np.uint32(bits) << np.uint32(16)).view(np.float32)


def _int32_bits_to_float32_python(bits):
    return np.int32(bits).view(np.float32)


@python_when_jit_disabled(_bf16_bits_to_float32_python)
@intrinsic
def bf16_bits_to_float32(typingctx, bits):
    """uint16 bf16 bits -> float32: the bits become the upper half of a float32."""
    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())
    return types.float32(types.uint16), codegen


def _as_float32_python(value):
    return _bf16_bits_to_float32_python(value) if np.asarray(value).dtype == np.uint16 else np.float32(value)


@python_when_jit_disabled(_as_float32_python)
def as_float32(value):
    """One stored number as float32: float32 itself, or bfloat16 bits (uint16) widened. Kernels read
    weights and KV-cache entries through it, so one compiled kernel per storage type."""


@overload(as_float32)
def _as_float32(value):
    if value == types.uint16:
        return lambda value: bf16_bits_to_float32(value)
    return lambda value: np.float32(value)


@python_when_jit_disabled(_int32_bits_to_float32_python)
@intrinsic
def int32_bits_to_float32(typingctx, bits):
    """Reinterpret the 32 bits of an int32 as a float32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(error_model="numpy", fastmath=FASTMATH, inline="always", cache=True)
def exp_f32(x):
    """exp(x) in float32 to ~3 ulp: x = n ln2 + r, |r| <= ln2/2; exp(r) by its degree-7 Taylor
    polynomial, times 2^n built from the exponent bits. exp(x < -88) = 0 (so exp(-inf) = 0);
    x > 88 is clamped to 88 (softmax arguments are <= 0; silu only needs exp(-g) to be huge)."""
    xc = min(max(x, np.float32(-88.0)), np.float32(88.0))                       # exp(88) < float32 max
    n = np.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))           # round(x / ln2)
    r = xc - n * np.float32(0.693145751953125) - n * np.float32(1.428606765330187e-06)  # ln2 in two parts
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    y = p * int32_bits_to_float32((np.int32(n) + np.int32(127)) << 23)         # p * 2^n
    return y if x >= np.float32(-88.0) else np.float32(0.0)                      # a select: vectorises
