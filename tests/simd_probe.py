"""Compile the fast quantized row kernels without running them, for tests/test_simd_targets.py.

    python tests/simd_probe.py MARKER OUT.json

MARKER is a numba_quant.SIMD_MARKERS name: "native" is the level of the CPU Numba targets, which
NUMBA_CPU_NAME / NUMBA_CPU_FEATURES may set to a CPU that is not this one; "vector" is generic LLVM.
OUT.json gets {"level": the level compiled, "asm": {family: assembly}, "llvm": {family: LLVM IR}}
of one function per fast family (ggml blocks, int8, int4) that calls the decode dot product
(fast_dot) and the prefill one (fast_dot4). Nothing runs: code for another CPU may not run here.
"""
import json
import re
import sys

import numpy as np
from numba import njit, typeof

from minilm.formats import quantize
from minilm.ops import numba_quant as NQ
from minilm.ops.numba_quant_rows import fast_dot, fast_dot4

FAMILIES = {"ggml": ("q4_1", {}), "int8": ("int8", {}), "int4": ("int4", {"group_size": 32})}


def probe_function():
    @njit(error_model="numpy")
    def probe(w, xq, xds, simd):
        y0, y1, y2, y3 = fast_dot4(w, 0, xq, xds, 0, simd)
        return fast_dot(w, 0, xq, xds, 0, simd) + y0 + y1 + y2 + y3
    return probe


def compile_probes(marker_name: str) -> dict:
    marker = NQ.SIMD_MARKERS[marker_name]
    xq, xds = np.zeros((4, 2, 32), np.int8), np.zeros((4, 2, 2), np.float32)
    asm, llvm = {}, {}
    for family, (fmt, options) in FAMILIES.items():
        weight = NQ.prepare(quantize(np.ones((4, 64), np.float32), fmt, mode="fast", **options))
        probe = probe_function()                       # a fresh function: its code can be inspected
        probe.compile(tuple(typeof(a) for a in (NQ.kernel_arrays(weight), xq, xds, marker)))
        signature = probe.signatures[0]
        asm[family], llvm[family] = probe.inspect_asm(signature), probe.inspect_llvm(signature)
    return {"level": NQ.kernel_path() if marker_name == "native" else marker_name, "asm": asm, "llvm": llvm}


def retarget(llvm_ir: str, triple: str, cpu: str, features: str = "") -> str:
    """Assembly of an LLVM module Numba optimised for this host, compiled for another target. Functions
    that call this host's intrinsics (Numba's reference counting uses an x86 atomic) become empty:
    the kernels under test call none."""
    import llvmlite.binding as llvm
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    machine = llvm.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=3)
    host = re.compile(r"@llvm\.(x86|aarch64)\.")
    lines, out, i = llvm_ir.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("define ") and line.rstrip().endswith("{"):
            end = lines.index("}", i)
            body = lines[i:end + 1]
            out += [line, "  unreachable", "}"] if any(host.search(b) for b in body) else body
            i = end + 1
            continue
        if line.startswith("target triple"):
            line = f'target triple = "{triple}"'
        elif line.startswith("target datalayout"):
            line = f'target datalayout = "{machine.target_data}"'
        elif line.startswith("declare") and host.search(line):
            line = ""
        out.append(line)
        i += 1
    module = llvm.parse_assembly("\n".join(out))
    module.verify()
    return machine.emit_assembly(module)


def instructions(asm: str) -> set:
    """The mnemonics of an assembly listing (x86's {vex} prefix dropped)."""
    return {m.group(1) for m in re.finditer(r"^\s+(?:\{vex\}\s+)?([a-z][a-z0-9.]*)\b", asm, re.M)}


if __name__ == "__main__":
    with open(sys.argv[2], "w") as f:
        json.dump(compile_probes(sys.argv[1]), f)
