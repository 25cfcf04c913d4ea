"""One switch picks the implementation of every op: numpy (reference), numba, cuda, cuda-emulated.

A backend is a namespace with exactly the ops of the contract in
`minilm/ops/contract.py`, built from one table per backend. Model code only
ever calls `backend.<op>(...)`.
"""
from __future__ import annotations

from .extras import require_extra

BACKENDS = ("numpy", "numba", "cuda", "cuda-emulated")


def get_backend(name: str, **options):
    if name == "numpy":
        if options:
            raise ValueError(f"backend='numpy' takes no options, got {', '.join(options)}")
        from .ops.numpy_backend import numpy_backend
        return numpy_backend()
    if name == "numba":
        from .notices import announce_numba_compiles
        from .ops.numba_backend import numba_backend
        announce_numba_compiles()            # a cold cache compiles for a minute or more: say so
        return numba_backend(**options)
    if name in ("cuda", "cuda-emulated"):
        require_extra("cupy", "cuda", f"backend={name!r}")   # the emulator also takes its headers from CuPy
        from .cuda.backend import make_cuda_backend
        return make_cuda_backend(emulated=(name == "cuda-emulated"), **options)
    raise ValueError(f"unknown backend={name!r} (choose one of: {', '.join(BACKENDS)})")
