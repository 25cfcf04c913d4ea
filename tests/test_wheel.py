"""A wheel of minilm works on its own: the CUDA kernel sources ship inside the package, and the
base install (no extras: no torch, transformers, CuPy or matplotlib) generates, draws masks, and
names the extra that each other command needs.

Builds a wheel offline from a copy of this checkout, installs it into a fresh
venv in a temporary folder, and from a working directory outside the checkout
runs a tiny random llama on backend="cuda-emulated" (against the NumPy
backend) and compiles every kernel with NVRTC. The venv borrows the heavy
dependencies (numpy, numba, cupy, the CUDA wheels) from the system
site-packages, which also hold an editable minilm: the test proves that the
venv's own installed copy is the one imported, then deletes a kernel file
from that copy and checks that minilm now fails, naming the missing file.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minilm.cuda import registry
from minilm.testing import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv")

# Runs inside the venv: where minilm comes from, the model on both backends, NVRTC over every kernel.
RUN_INSTALLED = r'''
import importlib.metadata, json, sys, sysconfig
from pathlib import Path
import numpy as np
import minilm
from minilm.cuda import nvrtc, registry

ids = np.array([[1, 17, 200, 5, 42, 9, 130]])
emulated = minilm.load(sys.argv[1], backend="cuda-emulated", progress=False)
reference = minilm.load(sys.argv[1], backend="numpy", progress=False)
difference = np.abs(emulated(ids).logits - reference(ids).logits).max()
compiled = {module: sorted(k.name for k in nvrtc.compile_check(registry.module_source(module), names,
                                                                 nvrtc.ARCHITECTURES[-1], f"{module}.cu").kernels)
            for module, names in registry.MODULES.items()}
print(json.dumps({"purelib": sysconfig.get_paths()["purelib"], "minilm": minilm.__file__,
                  "kernels": str(registry.kernel_dir()),
                  "distribution": str(importlib.metadata.distribution("minilm").locate_file("")),
                  "max_difference": float(difference), "compiled": compiled}))
'''

LOAD_RMS_NORM = r'''
from minilm.cuda import registry
try:
    registry.module_source("rms_norm")
except FileNotFoundError as error:
    print(error)
'''


def run(args, cwd: Path, env: dict, timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def clean_env(tmp: Path) -> dict:
    """No PYTHONPATH (it would put a checkout first) and a private harness build cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["MINILM_CUDA_CACHE"] = str(tmp / "cuda-cache")
    return env


def copy_checkout(tmp: Path) -> Path:
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SHIPPED)   # keeps minilm/kernels a link
    return source


def make_venv(tmp: Path, env: dict) -> Path:
    """A venv that sees the system site-packages (and their pip); returns its python."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp, env)
    return venv / "bin" / "python"


def build_wheel(tmp: Path, env: dict) -> Path:
    """A wheel of a copy of this checkout, built offline."""
    source = copy_checkout(tmp)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp / "dist", source], tmp, env)
    [wheel] = (tmp / "dist").glob("minilm-*.whl")
    return wheel


def test_installed_wheel_runs_cuda_emulated_and_nvrtc_outside_the_checkout(tmp_path):
    env = clean_env(tmp_path)
    wheel = build_wheel(tmp_path, env)

    python = make_venv(tmp_path, env)
    venv = python.parents[1]
    # pip comes from the system site-packages; --ignore-installed leaves their editable minilm alone.
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed", wheel],
        tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    tiny_checkpoint("llama", tmp_path / "tiny-llama")
    report = json.loads(run([python, "-c", RUN_INSTALLED, tmp_path / "tiny-llama"], work, env).splitlines()[-1])

    site = Path(report["purelib"]).resolve()
    assert site.is_relative_to(venv.resolve()), report
    for key in ("minilm", "kernels", "distribution"):
        path = Path(report[key]).resolve()
        assert path.is_relative_to(site), f"{key} comes from {path}, not from the venv's {site}"
        assert not path.is_relative_to(ROOT), f"{key} comes from the checkout: {path}"
    installed_kernels = site / "minilm" / "kernels"
    assert not installed_kernels.is_symlink() and (installed_kernels / "common.cuh").is_file()
    assert report["max_difference"] < 1e-4, report["max_difference"]
    assert report["compiled"] == {m: sorted(names) for m, names in registry.MODULES.items()}

    # Negative control: without its kernel file the installed copy fails, naming the file.
    (installed_kernels / "rms_norm.cu").unlink()
    message = run([python, "-c", LOAD_RMS_NORM], work, env)
    assert f"{installed_kernels / 'rms_norm.cu'} is missing" in message, message


def test_editable_install_finds_the_checkouts_kernels(tmp_path):
    env = clean_env(tmp_path)
    source = copy_checkout(tmp_path)
    python = make_venv(tmp_path, env)
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--ignore-installed", "-e", source], tmp_path, env)
    found = run([python, "-c", "from minilm.cuda import registry; print(registry.module_file('rms_norm'))"],
                tmp_path, env).strip()
    assert Path(found).resolve() == (source / "kernels" / "rms_norm.cu").resolve()   # through the link


OPTIONAL = ("torch", "transformers", "accelerate", "cupy", "matplotlib", "jupyter", "pytest")
FIND_OPTIONAL = f"import importlib.util as u; print([m for m in {OPTIONAL!r} if u.find_spec(m)])"
EXTRA_HINTS = {  # command (after --model) -> the one line it must print
    ("parity",): 'minilm: error: minilm parity needs the [parity] extra: pip install -e ".[parity]"',
    ("masks", "--png", "m.png"): 'minilm: error: minilm masks --png needs the [notebooks] extra: '
                                 'pip install -e ".[notebooks]"',
    ("generate", "Hi", "--backend", "cuda-emulated"): 'minilm: error: minilm generate --backend cuda-emulated '
                                                      'needs the [cuda] extra: pip install -e ".[cuda]"',
}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_base_install_without_extras_generates_and_names_the_missing_extras(tmp_path, smollm2_dir):
    """A venv without system site-packages and the wheel with its declared dependencies only
    (from the package index pip is configured with); then everything runs offline, from an empty HOME."""
    env = clean_env(tmp_path)
    wheel = build_wheel(tmp_path, env)
    venv = tmp_path / "bare"
    try:
        run([sys.executable, "-m", "venv", venv], tmp_path, env)
        python, minilm_command = venv / "bin" / "python", venv / "bin" / "minilm"
        run([python, "-m", "pip", "install", "--quiet", "--only-binary", ":all:", wheel], tmp_path, env, timeout=900)
        assert run([python, "-c", FIND_OPTIONAL], tmp_path, env).strip() == "[]"

        home = tmp_path / "home"
        home.mkdir()
        offline = {**env, "HOME": str(home), "HF_HUB_OFFLINE": "1", "MINILM_CACHE": str(home / "cache")}
        result = subprocess.run([minilm_command, "generate", "What is the capital of France?", "--model", smollm2_dir,
                                 "--max-new-tokens", "24", "--seed", "0"], cwd=home, env=offline,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert "Paris" in result.stdout and "tokens/s" in result.stderr
        pictures = run([minilm_command, "masks", "--model", smollm2_dir, "--length", "4"], home, offline)
        assert "causal (full attention), RoPE" in pictures

        for args, hint in EXTRA_HINTS.items():
            result = subprocess.run([minilm_command, *args, "--model", smollm2_dir], cwd=home, env=offline,
                                    capture_output=True, text=True, timeout=120)
            assert (result.returncode, result.stderr.strip()) == (2, hint), result.stderr
        size = disk_bytes(venv) / 2**20
        print(f"base install venv: {size:.0f} MiB")
        assert size < 600, f"the base install takes {size:.0f} MiB: did torch or CuPy come back?"
    finally:
        shutil.rmtree(venv, ignore_errors=True)     # a few hundred MB: not kept among pytest's last three runs
