"""The Numba backend: the op contract, compiled.

Kernels live beside their references: ops/norm.py -> ops/numba_norm.py, and so
on. Compiled code is cached on disk (cache=True, in ops/__pycache__), so only
the first process after an install pays the JIT (~20 s); later ones load
machine code in about a second. Numba checks only each kernel's own file for
changes: after editing the shared helpers in numba_math.py, delete
ops/__pycache__/numba_*.nbi so that the kernels in other files that use them
are rebuilt.

Weights: float32 and bfloat16 (uint16 bits, widened in registers) in
numba_linear.py; the quantized formats in numba_quant.py (exact: blocks
decoded in registers; fast: int8 activations and integer dot products). Every
kernel accumulates in float32.
"""
from __future__ import annotations

import numba
import numpy as np

from ..errors import UnsupportedFormatError
from ..formats import Weight
from . import numba_attention, numba_linear, numba_mlp, numba_norm, numba_quant, numba_rope, numba_sampling
from .contract import build_backend
from .numpy_backend import host_array

# Every weight format's kernels: (format, mode) -> linear kernel, format -> embedding kernel.
LINEAR = {**numba_linear.LINEAR, **numba_quant.LINEAR}
EMBEDDING = {**numba_linear.EMBEDDING, **numba_quant.EMBEDDING}


def supports(format, mode):
    return (format, mode) in LINEAR and format in EMBEDDING


def prepare_weight(weight: Weight) -> Weight:
    """Refuse what no kernel runs; give the kernels the arrays they read (C-contiguous, repacked)."""
    if not supports(weight.format, weight.mode):
        raise UnsupportedFormatError(f"backend 'numba' does not run weight format {weight.format!r} in "
                                     f"{weight.mode} mode")
    if weight.format in numba_quant.EMBEDDING:
        return numba_quant.prepare(weight)
    arrays = {name: a if a.flags.c_contiguous else np.ascontiguousarray(a) for name, a in weight.arrays.items()}
    return weight.with_arrays(**arrays)


def linear(x, weight, bias=None):
    """x [..., IN] @ W^T (+ bias [OUT]) -> [..., OUT] for a Weight prepare_weight returned."""
    lead, IN = x.shape[:-1], x.shape[-1]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, IN)       # [N, IN]
    out = np.empty((x2.shape[0], weight.shape[0]), dtype=np.float32)      # [N, OUT]
    LINEAR[weight.format, weight.mode](x2, weight, numba_linear.NO_BIAS if bias is None else bias, out)
    return out.reshape(*lead, weight.shape[0])


def embedding(ids, table):
    """ids [B, T] -> table rows [B, T, D]: only these rows are read and decoded."""
    ids = np.asarray(ids)
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    out = np.empty((flat.size, table.shape[1]), dtype=np.float32)
    EMBEDDING[table.format](flat, table, out)
    return out.reshape(*ids.shape, table.shape[1])


def threads(count=None):
    """Numba's thread count for the kernels launched from this thread (cheap to change per step)."""
    if count is not None:
        numba.set_num_threads(max(1, min(int(count), numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()


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
        linear=linear,
        embedding=embedding,
        scale_logits=numba_linear.scale_logits,
        argmax=numba_sampling.argmax,
        top_k_filter=numba_sampling.top_k_filter,
        top_p_filter=numba_sampling.top_p_filter,
        asarray=host_array,
        to_numpy=host_array,
        threads=threads,
        supports=supports,
        prepare_weight=prepare_weight,
    ))
