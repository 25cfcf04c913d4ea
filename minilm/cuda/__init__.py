"""The CUDA path: kernels/*.cu launched through CuPy on a GPU, or on the CPU harness.

    make_cuda_backend(emulated=False)  backend="cuda": cupy.RawModule on a real GPU
    make_cuda_backend(emulated=True)   backend="cuda-emulated": the same kernels on the CPU
    EmulatedModule                     cupy.RawModule's interface for the CPU harness
    nvrtc.compile_check                compile for sm_80/sm_90 without a GPU, with ptxas stats

See docs/cuda.md.
"""
from .backend import CudaBackend, NoGpuError, gpu_available, make_cuda_backend

__all__ = ["CudaBackend", "NoGpuError", "gpu_available", "make_cuda_backend"]
