"""Compile kernels with NVRTC exactly as cupy.RawModule would, without a GPU.

CuPy's public compile entry points ask the (absent) device for its
architecture first, so we build CuPy's option list ourselves and call its
private `_NVRTCProgram` (pinned CuPy version; the compile test fails loudly
if that API moves). `-Xptxas=-v` makes ptxas report registers, spills and
shared memory per kernel, which the tests check.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

ARCHITECTURES = (80, 90)  # A100, H100


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected the source; the message is NVRTC's log."""


@dataclass
class KernelResources:
    name: str            # the name expression, e.g. "rms_norm<float, float>"
    registers: int
    spill_stores: int    # bytes
    spill_loads: int
    stack_frame: int
    shared_bytes: int    # static shared memory


@dataclass
class CompileReport:
    arch: int
    kernels: list[KernelResources] = field(default_factory=list)
    log: str = ""


def nvrtc_options(arch: int) -> tuple[str, ...]:
    """CuPy's RawModule options (cupy/cuda/compiler.py), plus -Xptxas=-v for the resource report."""
    from .toolchain import cupy_compiler_options
    return cupy_compiler_options() + ("-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space",
                                      "-Xptxas=-v")


def compile_check(source: str, name_expressions: list[str], arch: int, filename: str = "kernel.cu") -> CompileReport:
    """Compile to a cubin for sm_<arch>; raise NvrtcCompileError with NVRTC's log on failure."""
    from cupy.cuda import compiler

    program = compiler._NVRTCProgram(source, filename, name_expressions=list(name_expressions), method="cubin")
    log = io.StringIO()
    try:
        _, mapping = program.compile(nvrtc_options(arch), log)
    except compiler.CompileException as error:
        raise NvrtcCompileError(f"NVRTC failed to compile {filename} for sm_{arch}:\n{error}") from None
    text = log.getvalue()
    lowered_to_expression = {lowered: expr for expr, lowered in (mapping or {}).items()}
    return CompileReport(arch, parse_ptxas_log(text, lowered_to_expression), text)


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_\d+'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas_log(log: str, names: dict[str, str]) -> list[KernelResources]:
    """ptxas -v prints, per entry function: its name, its stack/spill line, its register line."""
    kernels, current = [], None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = KernelResources(names.get(m.group(1), m.group(1)), 0, 0, 0, 0, 0)
            kernels.append(current)
        elif current and (m := _FRAME.search(line)):
            current.stack_frame, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif current and (m := _USED.search(line)):
            current.registers = int(m.group(1))
            current.shared_bytes = int(m.group(2) or 0)
    return kernels
