"""The Numba backend: the op contract, compiled.

Kernels live beside their references: ops/norm.py -> ops/numba_norm.py, and so
on. Compiled code is cached on disk (cache=True, in ops/__pycache__), so only
the first process after an install pays the JIT (~20 s); later ones load
machine code in about a second. Numba checks only each kernel's own file for
changes: after editing the shared helpers in numba_math.py, delete
ops/__pycache__/numba_*.nbi so that the kernels in other files that use them
are rebuilt.

Weights: float32 and bfloat16 (uint16 bits, widened in registers) in
numba_linear.py; the quantized formats in numba_quant.py. Every kernel
accumulates in float32.
"""
from __future__ import annotations

import numba
import numpy as np

from ..errors import UnsupportedFormatError
from ..formats import Weight
from . import numba_attention, numba_linear, numba_mlp, numba_norm, numba_rope, numba_sampling
from .contract import build_backend
from .numpy_backend import host_array


def supports(format, mode):
    return (format, mode) in numba_linear.LINEAR and format in numba_linear.EMBEDDING


def prepare_weight(weight: Weight) -> Weight:
    """Refuse what no kernel runs; make the arrays C-contiguous (a memory map already is)."""
    if not supports(weight.format, weight.mode):
        raise UnsupportedFormatError(f"backend 'numba' does not run weight format {weight.format!r} in "
                                     f"{weight.mode} mode")
    arrays = {name: a if a.flags.c_contiguous else np.ascontiguousarray(a) for name, a in weight.arrays.items()}
    return weight.with_arrays(**arrays)


def numba_backend(num_threads: int | None = None):
    """num_threads: Numba threads (default: all cores)."""
    if num_threads is not None:
        numba.set_num_threads(num_threads)
    return build_backend("numba", dict(
        rms_norm=numba_norm.rms_norm,
        layer_norm=numba_norm.layer_norm,
        apply_rope=numba_rope.apply_rope,
        attention=numba_attention.attention,
        attention_probs=numba_attention.attention_probs,
        swiglu=numba_mlp.swiglu,
        linear=numba_linear.linear,
        embedding=numba_linear.embedding,
        scale_logits=numba_linear.scale_logits,
        argmax=numba_sampling.argmax,
        top_k_filter=numba_sampling.top_k_filter,
        top_p_filter=numba_sampling.top_p_filter,
        asarray=host_array,
        to_numpy=host_array,
        supports=supports,
        prepare_weight=prepare_weight,
    ))
