"""The CPU harness off its home ground: the portable fiber switch, clang++, and AArch64.

(a) the ucontext fiber switch, forced on this machine, and (b) a clang++
build, each running real kernels from kernels/ (RMSNorm, attention) through
backend="cuda-emulated" against the NumPy reference; (c) the hand-written
AArch64 switch and the ucontext one, cross-compiled into a small executable
(tests/cuda_kernels/rms_norm_main.cpp) that launches rms_norm on fixed
inputs under qemu-user. Negative controls: the AArch64 check fails for a
switch that does not restore d8-d15, and libraries with different switches
export their worker pools process-wide without -fvisibility=hidden.
"""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cupy  # noqa: F401  (the harness takes its CUDA include directories from CuPy)

from minilm.cuda import emulator, registry  # noqa: E402
from minilm.cuda.backend import CudaBackend  # noqa: E402
from minilm.cuda.emulator import EmulatedModule  # noqa: E402
from minilm.ops import attention as ref_attention  # noqa: E402
from minilm.ops import norm  # noqa: E402
from test_cuda_harness import run_in_child  # noqa: E402

MAIN = Path(__file__).parent / "cuda_kernels" / "rms_norm_main.cpp"
AARCH64_CXX = "aarch64-linux-gnu-g++"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")   # Debian's cross libc, for qemu -L


def emulated_backend(monkeypatch, compiler: str | None, ucontext: bool):
    """A fresh cuda-emulated backend built the way $MINILM_CXX / $MINILM_HARNESS_UCONTEXT ask."""
    if compiler:
        monkeypatch.setenv("MINILM_CXX", compiler)
    else:
        monkeypatch.delenv("MINILM_CXX", raising=False)
    monkeypatch.setenv("MINILM_HARNESS_UCONTEXT", "1" if ucontext else "0")
    return CudaBackend(emulated=True)         # the class: its launch helpers (_module) too


def run_rms_norm_and_attention(backend) -> None:
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 5, 300)).astype(np.float32), (1 + 0.3 * rng.standard_normal(300)).astype(np.float32)
    got = backend.to_numpy(backend.rms_norm(x, w, 1e-6))
    np.testing.assert_allclose(got, norm.rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-5)

    B, T, S, H, KV, HD = 2, 3, 150, 4, 2, 32       # GQA, two key tiles, a left-padded row
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in
               [(B, T, H, HD), (B, S, KV, HD), (B, S, KV, HD)])
    valid = np.ones((B, S), bool)
    valid[1, :7] = False
    mask = ref_attention.attention_mask(np.arange(S - T, S), np.arange(S), valid, None)
    got = backend.to_numpy(backend.attention(q, k, v, mask, HD ** -0.5))
    np.testing.assert_allclose(got, ref_attention.attention(q, k, v, mask, HD ** -0.5), rtol=1e-5, atol=1e-5)


def test_ucontext_switch_runs_real_kernels(monkeypatch):
    backend = emulated_backend(monkeypatch, None, ucontext=True)
    run_rms_norm_and_attention(backend)
    assert {backend._module(m).fiber_switch for m in ("rms_norm", "attention")} == {"ucontext"}


@pytest.mark.skipif(shutil.which("clang++") is None, reason="clang++ is not installed (apt-get install clang)")
def test_clang_build_runs_real_kernels(monkeypatch):
    backend = emulated_backend(monkeypatch, "clang++", ucontext=False)
    run_rms_norm_and_attention(backend)
    library = backend._module("rms_norm").library_path
    assert b"clang version" in library.read_bytes(), f"{library} was not built by clang++"


COUNT = r"""
extern "C" __global__ void count_barriers(float* out, int n) {
    float value = threadIdx.x;
    for (int i = 0; i < n; ++i) { __syncthreads(); value += 1.0f; }
    out[threadIdx.x] = value;
}
"""


def run_both_switches_in_one_process() -> None:
    """x86-64/AArch64 and ucontext libraries, each launched on the calling thread, in turn."""
    for ucontext in (False, True, False):
        module = EmulatedModule(COUNT, ["count_barriers"], compiler="g++", ucontext=ucontext, workers=1)
        out = np.zeros(64, np.float32)
        module.get_function("count_barriers")((1,), (64,), (out, np.int32(5)))
        np.testing.assert_array_equal(out, np.arange(64) + 5)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_libraries_with_different_switches_share_a_process(monkeypatch):
    assert run_in_child(run_both_switches_in_one_process) == ("ok", "")
    # Why it works: each library keeps its worker pool to itself. Negative control: export
    # everything, as before -fvisibility=hidden; g++ then exports the pool as a process-wide
    # (STB_GNU_UNIQUE) symbol that every harness library in the process binds to, and the ucontext
    # library resumes x86-64 workers. (Checked on the symbol table: the crash that follows is
    # undefined behaviour and does not always happen.)
    assert WORKER_POOL not in exported_symbols(count_module().library_path)
    flags = emulator.compile_flags
    monkeypatch.setattr(emulator, "compile_flags", lambda *a, **k: [f for f in flags(*a, **k)
                                                                    if f != "-fvisibility=hidden"])
    assert WORKER_POOL in exported_symbols(count_module().library_path)


WORKER_POOL = "_ZN7harness11worker_poolE"       # harness::worker_pool, mangled


def count_module() -> EmulatedModule:
    return EmulatedModule(COUNT, ["count_barriers"], compiler="g++", ucontext=False, workers=1)


def exported_symbols(library: Path) -> set[str]:
    """The symbols the shared library defines for the dynamic linker (nm -D --defined-only)."""
    listing = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True).stdout
    return {line.split()[-1] for line in listing.splitlines() if line.strip()}


def test_compiler_choice_and_errors(monkeypatch):
    monkeypatch.setenv("MINILM_CXX", "no-such-compiler++")
    with pytest.raises(emulator.HarnessBuildError, match="'no-such-compiler\\+\\+'.*not on PATH"):
        emulator.find_compiler()
    monkeypatch.delenv("MINILM_CXX")
    assert Path(emulator.find_compiler()).name in emulator.DEFAULT_COMPILERS
    assert emulator.find_compiler("c++") == shutil.which("c++")


def test_build_cache_key_includes_compiler_version_and_switch(monkeypatch):
    versions = {"/usr/bin/g++": "g++ 12.2.0", "/usr/bin/clang++": "clang version 14.0.6"}
    monkeypatch.setattr(emulator, "compiler_version", versions.get)
    text, flags = "// a kernel", emulator.compile_flags()
    path = emulator.cached_library_path(text, "/usr/bin/g++", flags)
    assert emulator.cached_library_path(text, "/usr/bin/g++", flags) == path
    assert emulator.cached_library_path(text, "/usr/bin/g++", emulator.compile_flags(ucontext=True)) != path
    assert emulator.cached_library_path(text, "/usr/bin/clang++", flags) != path
    versions["/usr/bin/g++"] = "g++ 13.1.0"   # an upgrade rebuilds
    assert emulator.cached_library_path(text, "/usr/bin/g++", flags) != path


# --- AArch64 under qemu-user --------------------------------------------------------

def rms_norm_main_expected() -> np.ndarray:
    """What rms_norm_main.cpp computes: its fixed inputs, through the NumPy reference."""
    rows, dim = 3, 300
    x = (((np.arange(rows * dim) * 37) % 101 - 50).astype(np.float32) / np.float32(25)).reshape(rows, dim)
    w = np.float32(1) + ((np.arange(dim) * 13) % 7 - 3).astype(np.float32) / np.float32(10)
    return norm.rms_norm(x, w, 1e-6).reshape(-1)


def cross_compile(tmp_path: Path, ucontext: bool, header: Path = emulator.HEADER) -> Path:
    source = (emulator.harness_source(registry.module_source("rms_norm"), ["rms_norm<float, float>"])
              + f'#line 1 "{MAIN}"\n' + MAIN.read_text())
    cpp, program = tmp_path / "rms_norm_main.cpp", tmp_path / f"rms_norm-{'ucontext' if ucontext else 'asm'}"
    cpp.write_text(source)
    flags = [str(header) if f == str(emulator.HEADER) else f for f in emulator.compile_flags(ucontext=ucontext)]
    result = subprocess.run([AARCH64_CXX, *flags, str(cpp), "-o", str(program)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return program


def run_under_qemu(program: Path) -> tuple[str, dict[str, np.ndarray]]:
    """-> (the fiber switch it reports, {"forward": outputs, "reverse": outputs})."""
    result = subprocess.run(["qemu-aarch64", "-L", str(AARCH64_SYSROOT), str(program)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{program.name} exited with {result.returncode}: {result.stderr[-2000:]}"
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    outputs = {order: np.array(lines[order].split(), dtype=np.float32) for order in ("forward", "reverse")}
    return lines["switch"], outputs


needs_aarch64 = pytest.mark.skipif(
    shutil.which(AARCH64_CXX) is None or shutil.which("qemu-aarch64") is None or not AARCH64_SYSROOT.is_dir(),
    reason="needs g++-aarch64-linux-gnu and qemu-user (apt-get install g++-aarch64-linux-gnu qemu-user)")


@needs_aarch64
@pytest.mark.parametrize("switch", ["aarch64", "ucontext"])
def test_aarch64_rms_norm_under_qemu(tmp_path, switch):
    reported, outputs = run_under_qemu(cross_compile(tmp_path, ucontext=switch == "ucontext"))
    assert reported == switch
    np.testing.assert_array_equal(outputs["forward"], outputs["reverse"])
    np.testing.assert_allclose(outputs["forward"], rms_norm_main_expected(), rtol=1e-5, atol=1e-6)


@needs_aarch64
def test_aarch64_switch_that_loses_d8_to_d15_is_caught(tmp_path):
    # Negative control: restore only the integer registers. Kernels keep floats in d8-d15
    # across __syncthreads and shuffles, so other fibers' values leak in.
    header = emulator.HEADER.read_text()
    restores = [f"    ldp d{n}, d{n + 1}, [sp, #{96 + 8 * (n - 8)}]\n" for n in (8, 10, 12, 14)]
    assert all(line in header for line in restores), "the AArch64 switch changed: update this control"
    for line in restores:
        header = header.replace(line, "")
    broken = tmp_path / "broken_harness.h"
    broken.write_text(header)
    program = cross_compile(tmp_path, ucontext=False, header=broken)
    try:
        reported, outputs = run_under_qemu(program)
    except AssertionError:
        return  # it crashed: caught
    assert reported == "aarch64"
    assert not np.allclose(outputs["forward"], rms_norm_main_expected(), rtol=1e-5, atol=1e-6)
