"""`minilm gpu-check --fetch-wheels DIR`: what a bare GPU machine needs besides its image.

The image the check was prepared for has CUDA, CuPy, Numba, NumPy, PyTorch, transformers,
safetensors and tokenizers for Python 3.12, and nothing else, no network either. So the folder
gets minilm itself (a wheel built from this checkout, kernels included) and the pure-Python
wheels (py3-none-any: any Python 3) of the other packages the check imports, pinned to the
versions installed here, which the test suite ran with. On the GPU machine:

    python -m pip install --no-index --no-deps gpu-wheels/*.whl
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile

# gguf (minilm reads and writes GGUF files with it); pytest and what it imports.
PURE_PYTHON = ("gguf", "pytest", "pluggy", "iniconfig", "pygments", "packaging")
MAX_BYTES = 64 * 2**20                     # what travels to the device with the working tree
NOT_SHIPPED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv",
                                     "gpu-wheels", "notebooks")


def checkout_root() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "pyproject.toml")):
        raise ValueError(f"--fetch-wheels builds minilm's wheel from a checkout; {root} has no pyproject.toml")
    return root


def pinned(name: str) -> str:
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"--fetch-wheels pins the versions installed here, and {name} is not installed "
                         f"(pip install -e \".[test]\")") from None


def pip(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OSError(f"pip {args[0]} failed: {last}")


def build_minilm_wheel(folder: str) -> None:
    """A wheel of a copy of this checkout (the build leaves its folders in the copy), offline."""
    with tempfile.TemporaryDirectory(prefix="minilm-wheel-") as tmp:
        source = os.path.join(tmp, "source")
        shutil.copytree(checkout_root(), source, symlinks=True, ignore=NOT_SHIPPED)   # minilm/kernels stays a link
        pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", folder, source)


def fetch_wheels(folder: str, log=print) -> list[str]:
    """Fill `folder` with the wheels; returns their names. Fails if they come to MAX_BYTES or more."""
    os.makedirs(folder, exist_ok=True)
    stale = [f for f in os.listdir(folder) if f.endswith(".whl")]
    if stale:
        raise ValueError(f"{folder} already holds wheels ({', '.join(sorted(stale))}); give an empty or new folder")
    build_minilm_wheel(folder)
    pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation",
        "py", "--abi", "none", "--platform", "any", "-d", folder, *map(pinned, PURE_PYTHON))
    wheels = sorted(f for f in os.listdir(folder) if f.endswith(".whl"))
    sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in wheels}
    for name, size in sizes.items():
        log(f"  {name}: {size / 2**20:.2f} MiB")
    total = sum(sizes.values())
    log(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {folder}; on the GPU machine: "
        f"python -m pip install --no-index --no-deps {folder}/*.whl")
    if total >= MAX_BYTES:
        raise ValueError(f"the wheels in {folder} come to {total / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB "
                         "that travel to a GPU machine")
    return wheels
