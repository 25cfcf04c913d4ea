"""Every kernel compiles with NVRTC, as cupy.RawModule would, for sm_80 and sm_90, with no spills.

No GPU is needed: minilm.cuda.nvrtc calls CuPy's NVRTC program wrapper with
CuPy's own options plus -Xptxas=-v, and parses ptxas's resource report. A
kernel that does not compile fails here with NVRTC's message.
"""
import re

import pytest

import cupy  # noqa: F401  (required by these tests: fail loudly when missing)

from minilm.cuda import nvrtc, registry  # noqa: E402
from minilm.cuda.emulator import EmulatedModule  # noqa: E402

MAX_STATIC_SHARED = 48 * 1024


def test_cupy_private_compile_api_is_still_there():
    # We rely on private CuPy API (pinned: cupy-cuda13x==14.2.0); fail loudly if it moves.
    from cupy._core import core
    from cupy.cuda import compiler
    assert callable(core.assemble_cupy_compiler_options)
    assert hasattr(compiler, "_NVRTCProgram") and hasattr(compiler, "CompileException")


def test_every_kernel_file_is_registered_and_explains_itself():
    files = {path.stem for path in registry.kernel_files()}
    assert files == set(registry.MODULES), "kernels/*.cu and registry.MODULES disagree"
    for path in registry.kernel_files():
        first_line = path.read_text().splitlines()[0]
        assert first_line.startswith(f"// {path.name} - "), f"{path.name} needs a header comment stating its idea"


@pytest.mark.parametrize("arch", nvrtc.ARCHITECTURES)
@pytest.mark.parametrize("module", list(registry.MODULES))
def test_kernel_compiles_without_spills(module, arch):
    names = registry.MODULES[module]
    report = nvrtc.compile_check(registry.module_source(module), names, arch, f"{module}.cu")
    assert sorted(k.name for k in report.kernels) == sorted(names), report.log
    for kernel in report.kernels:
        assert kernel.spill_stores == 0 and kernel.spill_loads == 0, \
            f"{kernel.name} spills on sm_{arch}: {kernel.spill_stores} B stored, {kernel.spill_loads} B loaded"
        assert kernel.shared_bytes <= MAX_STATIC_SHARED, f"{kernel.name} uses {kernel.shared_bytes} B shared"
        assert 0 < kernel.registers <= 255


BAD_SOURCE = """
extern "C" __global__ void clamp_to_infinity(float* x) {
    x[threadIdx.x] = fminf(x[threadIdx.x], INFINITY);  // g++ knows INFINITY; NVRTC has no <math.h>
}
"""


def test_nvrtc_errors_carry_nvrtcs_message():
    with pytest.raises(nvrtc.NvrtcCompileError) as error:
        nvrtc.compile_check(BAD_SOURCE, ["clamp_to_infinity"], 80, "bad.cu")
    assert re.search(r'identifier "INFINITY" is undefined', str(error.value))
    assert "sm_80" in str(error.value)


def test_why_the_compile_check_is_needed_next_to_the_harness():
    # The CPU harness compiles with g++, which accepts the code NVRTC rejects above.
    EmulatedModule(BAD_SOURCE, ["clamp_to_infinity"])


def test_ptxas_report_parsing():
    log = """ptxas info    : Compiling entry function '_Z4scalePf' for 'sm_90'
ptxas info    : Function properties for _Z4scalePf
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem"""
    [kernel] = nvrtc.parse_ptxas_log(log, {"_Z4scalePf": "scale"})
    assert (kernel.name, kernel.registers, kernel.spill_stores, kernel.spill_loads, kernel.shared_bytes) == \
        ("scale", 40, 4, 4, 256)
