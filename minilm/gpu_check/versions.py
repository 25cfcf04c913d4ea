"""Step 1: what the check runs on: the device, its driver, CUDA, CuPy and the Python packages."""
from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess

# The packages the check imports (pytest for the device tests, torch/transformers for the speed
# baseline); a missing one is named in the report.
PACKAGES = ("numpy", "numba", "cupy-cuda13x", "safetensors", "tokenizers", "gguf", "jinja2", "huggingface_hub",
            "tqdm", "pytest", "torch", "transformers", "minilm")
REQUIRED = ("numpy", "numba", "cupy-cuda13x", "safetensors", "tokenizers", "gguf", "pytest")


def package_versions() -> dict:
    """{distribution: version or None when it is not installed}."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_description() -> dict:
    """Device 0 as CuPy sees it, and the driver release as nvidia-smi prints it."""
    import cupy
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(0)
    return {
        "device": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "multiprocessors": props["multiProcessorCount"],
        "devices_visible": runtime.getDeviceCount(),
        "driver_release": nvidia_smi_driver(),
        "cuda_driver_api": _cuda_version(runtime.driverGetVersion()),
        "cuda_runtime": _cuda_version(runtime.runtimeGetVersion()),
        "nvrtc": ".".join(map(str, cupy.cuda.nvrtc.getVersion())),
        "cupy": cupy.__version__,
    }


def emulated_description() -> dict:
    """The dry run's "device": the CPU harness (kernels compiled by the host C++ compiler)."""
    import cupy
    from ..cuda.emulator import find_compiler
    return {"device": f"cuda-emulated: the CPU harness on {platform.processor() or platform.machine()}",
            "compiler": _first_line([find_compiler(), "--version"]), "cupy": cupy.__version__}


def nvidia_smi_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    return _first_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "--id=0"])


def _first_line(command: list) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def _cuda_version(number: int) -> str:
    """13000 -> '13.0' (CUDA's encoding: 1000 * major + 10 * minor)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def run_versions(dry_run: bool, log) -> dict:
    """The step's result; it fails when a package the check needs is missing."""
    packages = package_versions()
    device = emulated_description() if dry_run else gpu_description()
    missing = [name for name in REQUIRED if packages[name] is None]
    log(f"device: {device['device']}" + "".join(f", {k} {v}" for k, v in device.items() if k != "device"))
    log("packages: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in packages.items())
        + f", python {platform.python_version()}")
    status = "failed" if missing else "passed"
    return {"status": status, "device": device, "packages": packages, "python": platform.python_version(),
            **({"error": f"missing packages: {', '.join(missing)}"} if missing else {})}
