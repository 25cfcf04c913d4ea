"""One switch picks the implementation of every op: numpy (reference), numba, cuda.

A backend is a namespace of functions with the signatures listed in
`minilm/ops/__init__.py`. Model code only ever calls `backend.<op>(...)`.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .ops import attention, linear, mlp, norm, rope, sampling

BACKENDS = ("numpy", "numba", "cuda", "cuda-emulated")


def _identity(x):
    return x


def numpy_backend() -> SimpleNamespace:
    """The steppable reference: every op is plain NumPy on float32 arrays."""
    return SimpleNamespace(
        name="numpy",
        rms_norm=norm.rms_norm,
        layer_norm=norm.layer_norm,
        apply_rope=rope.apply_rope,
        attention=attention.attention,
        swiglu=mlp.swiglu,
        linear=linear.linear,
        embedding=linear.embedding,
        scale_logits=linear.scale_logits,
        argmax=sampling.argmax,
        top_k_filter=sampling.top_k_filter,
        top_p_filter=sampling.top_p_filter,
        asarray=_identity,
        to_numpy=np.asarray,
        prepare_weight=lambda array, dtype="float32": np.ascontiguousarray(array, dtype=np.float32),
    )


def get_backend(name: str, **options) -> SimpleNamespace:
    if name == "numpy":
        return numpy_backend()
    if name == "numba":
        from .ops.numba_backend import numba_backend
        return numba_backend(**options)
    if name in ("cuda", "cuda-emulated"):
        from .cuda.backend import make_cuda_backend
        return make_cuda_backend(emulated=(name == "cuda-emulated"), **options)
    raise ValueError(f"unknown backend={name!r} (choose one of: {', '.join(BACKENDS)})")
