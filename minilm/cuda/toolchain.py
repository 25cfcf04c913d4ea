"""Where the CUDA headers and caches are: shared by the NVRTC check and the CPU harness.

The harness compiles kernels with g++ (or clang++) against the same include
directories NVRTC gets from CuPy (the cudart/crt wheels and CuPy's bundled
libcudacxx), so `cuda_fp16.h` and `cuda_bf16.h` are the very same files on
both paths.
"""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def cupy_compiler_options() -> tuple[str, ...]:
    """The options cupy.RawModule starts from (include paths, --std=c++17)."""
    from cupy._core import core  # private API: pinned CuPy version, checked by tests
    return tuple(core.assemble_cupy_compiler_options(()))


def cuda_include_dirs() -> list[str]:
    dirs = [opt[2:] for opt in cupy_compiler_options() if opt.startswith("-I")]
    if not any((Path(d) / "crt" / "host_defines.h").exists() for d in dirs):
        raise RuntimeError("CUDA's crt headers are missing (crt/host_defines.h): "
                           "pip install 'cuda-toolkit[nvrtc,cudart,crt]==13.0.*'")
    return dirs


def cache_dir() -> Path:
    """~/.cache/minilm/cuda (or $MINILM_CUDA_CACHE), else a private temp folder."""
    candidates = [os.environ.get("MINILM_CUDA_CACHE"), Path.home() / ".cache" / "minilm" / "cuda",
                  Path(tempfile.gettempdir()) / f"minilm-cuda-{os.getuid()}"]
    for folder in filter(None, candidates):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return Path(folder)
        except OSError:
            continue
    raise RuntimeError("no writable folder for the CUDA harness build cache")
