"""The Numba backend: the same op namespace as numpy_backend(), compiled.

Kernels live beside their references: ops/norm.py -> ops/numba_norm.py, and so
on. Compiled code is cached on disk (cache=True, in ops/__pycache__), so only
the first process after an install pays the JIT (~20 s); later ones load
machine code in about a second. Numba checks only each kernel's own file for
changes: after editing the shared helpers in numba_math.py, delete
ops/__pycache__/numba_*.nbi so that the kernels in other files that use them
are rebuilt.

Matrix weights may be stored as float32 or as bfloat16 bits (uint16); every
kernel widens bf16 to float32 and accumulates in float32.
"""
from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np

from . import numba_attention, numba_linear, numba_mlp, numba_norm, numba_rope, numba_sampling

WEIGHT_DTYPES = ("float32", "bfloat16")


def prepare_weight(array, dtype: str = "float32") -> np.ndarray:
    """float32 [OUT, IN] -> storage: float32, or bf16 bits (uint16, rounded to nearest even)."""
    if dtype in ("float32", "fp32"):
        return np.ascontiguousarray(array, dtype=np.float32)
    if dtype in ("bfloat16", "bf16"):
        return numba_linear.to_bf16(array)
    raise ValueError(f"weight_dtype={dtype!r} is not supported by the numba backend "
                     f"(choose one of: {', '.join(WEIGHT_DTYPES)})")


def numba_backend(weight_dtype: str = "float32", num_threads: int | None = None) -> SimpleNamespace:
    """weight_dtype: default storage for prepare_weight; num_threads: Numba threads (default: all cores)."""
    if weight_dtype not in WEIGHT_DTYPES + ("fp32", "bf16"):
        raise ValueError(f"weight_dtype={weight_dtype!r} is not supported by the numba backend "
                         f"(choose one of: {', '.join(WEIGHT_DTYPES)})")
    if num_threads is not None:
        numba.set_num_threads(num_threads)
    return SimpleNamespace(
        name="numba",
        rms_norm=numba_norm.rms_norm,
        layer_norm=numba_norm.layer_norm,
        apply_rope=numba_rope.apply_rope,
        attention=numba_attention.attention,
        swiglu=numba_mlp.swiglu,
        linear=numba_linear.linear,
        embedding=numba_linear.embedding,
        scale_logits=numba_linear.scale_logits,
        argmax=numba_sampling.argmax,
        top_k_filter=numba_sampling.top_k_filter,
        top_p_filter=numba_sampling.top_p_filter,
        asarray=np.asarray,
        to_numpy=np.asarray,
        prepare_weight=lambda array, dtype=weight_dtype: prepare_weight(array, dtype),
    )
