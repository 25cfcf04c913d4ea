"""Each instruction-set level of the fast quantized kernels compiles to its instructions, on any host.

The level is chosen when compiling (numba_simd.SIMD_LEVEL), so a kernel that silently fell back
to widening multiplies on some CPU would still give right answers and only be slow: this file
catches that. tests/simd_probe.py compiles the decode and prefill dot products of every fast
family (ggml blocks, int8, int4) in a child process, without running them:

  x86 AVX2          Numba told the CPU is a Haswell            vpmaddubsw, vpmaddwd (and no vpdpbusd)
  x86 AVX-512 VNNI  Numba told the CPU is an Ice Lake server   vpdpbusd, on zmm for the q4 formats
                                                               (and no vpmaddubsw, vpmaddwd)
  AArch64 dotprod   the generic-vector code's LLVM IR, compiled by llvmlite for a Neoverse N1: sdot

none of them with a widening multiply (vpmulld, smull). The negative control compiles the
AArch64 code for a Cortex-A72, which has no dot-product instructions: sdot must then be absent.
Which paths also run here, against the NumPy reference: test_numba_quant.py.
"""
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import simd_probe  # noqa: E402

X86_BASE = "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2"
X86_TARGETS = {
    "avx2": ("haswell", X86_BASE + ",-avx512f,-avx512vnni,-avxvnni",
             {"vpmaddubsw", "vpmaddwd"}, {"vpdpbusd", "vpmulld"}),
    "avx512-vnni": ("icelake-server", X86_BASE + ",+avx512f,+avx512vl,+avx512bw,+avx512dq,+avx512vnni",
                    {"vpdpbusd"}, {"vpmaddubsw", "vpmaddwd", "vpmulld"}),
}
AARCH64 = "aarch64-unknown-linux-gnu"


def probe(tmp_path, marker: str, env: dict) -> dict:
    out = tmp_path / f"{marker}.json"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    child_env |= env | {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}   # compiled afresh, never cached
    subprocess.run([sys.executable, simd_probe.__file__, marker, str(out)], env=child_env, check=True, timeout=600)
    return json.loads(out.read_text())


@pytest.mark.parametrize("level", list(X86_TARGETS))
def test_x86_level_emits_its_instructions(tmp_path, level):
    cpu, features, expected, absent = X86_TARGETS[level]
    report = probe(tmp_path, "native", {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features})
    assert report["level"] == level
    for family, asm in report["asm"].items():
        found = simd_probe.instructions(asm)
        assert expected <= found, (level, family, expected - found)
        assert not absent & found, (level, family, absent & found)
    # The q4 formats take two blocks per vpdpbusd in 512-bit registers on AVX-512 (numba_simd,
    # "two blocks per step"); the AVX2 level never touches a zmm register.
    wide = re.search(r"vpdpbusd\s+[^\n]*zmm", report["asm"]["ggml"])
    assert bool(wide) == (level == "avx512-vnni"), level
    assert ("zmm" in "".join(report["asm"].values())) == (level == "avx512-vnni"), level


@pytest.fixture(scope="module")
def vector_ir(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("vector"), "vector", {})["llvm"]


def test_aarch64_dotprod_emits_sdot(vector_ir):
    for family, ir in vector_ir.items():
        found = simd_probe.instructions(simd_probe.retarget(ir, AARCH64, "neoverse-n1"))
        assert "sdot" in found, family
        assert not {"smull", "smull2", "umull", "umull2"} & found, family      # no widening multiplies left


def test_negative_control_aarch64_without_dotprod_has_no_sdot(vector_ir):
    for family, ir in vector_ir.items():
        found = simd_probe.instructions(simd_probe.retarget(ir, AARCH64, "cortex-a72"))
        assert "sdot" not in found and {"smull", "smull2"} & found, family


def test_levels_are_chosen_from_the_target_features():
    from minilm.ops.numba_simd import simd_level
    assert simd_level({"avx2": True, "avx512vnni": True, "avx512vl": True}, "x86_64") == "avx512-vnni"
    assert simd_level({"avx2": True, "avxvnni": True}, "x86_64") == "avx-vnni"
    assert simd_level({"avx2": True, "avx512vnni": False}, "x86_64") == "avx2"
    assert simd_level({"sse4.2": True}, "x86_64") == "vector"
    assert simd_level({"neon": True, "dotprod": True}, "aarch64") == "neon-dotprod"
    assert simd_level({"neon": True}, "aarch64") == "neon"
    assert simd_level({}, "riscv64") == "vector"
