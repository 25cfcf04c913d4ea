"""Every Numba kernel also runs as plain Python (NUMBA_DISABLE_JIT=1, how you step through one in a
debugger: docs/debugging.md) and gives what its compiled self gives on small inputs.

A child process with NUMBA_DISABLE_JIT=1 runs CASES through the numba backend's op table, records
which functions were called (sys.settrace), and saves the outputs; this process runs the same
CASES compiled and compares. The cases take every path: GEMV and tiled matmul, float32 and bf16
weights, every quantized format in exact and fast mode (fast: AVX2 intrinsics and plain loops),
serial and threaded attention, both RoPE layouts. Every @njit function in minilm/ops/numba_*.py
must have run in the child, so a new kernel fails here, naming itself, until CASES covers it.

The quantized kernels are built from LLVM @intrinsics (numba_simd.py) and @overload stubs
(numba_quant_rows.py); as Python each of those is its NumPy twin (python_when_jit_disabled), so the
AVX2 kernels run line by line too, and the comparison here checks each twin against the instruction.
A few kernels are the other side of a choice made from the CPU when compiling (table loads vs
vpermps for fp4/nf4, fp16 conversions without F16C): the op table never reaches them on this CPU,
so "kernel ..." cases call them directly.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minilm
from minilm.formats import quantize
from minilm.ops import numba_quant
from minilm.ops.attention import attention_mask
from minilm.ops.contract import OPS
from minilm.ops.numba_quant_rows import exact_dot_bnb
from minilm.ops import numba_simd
from minilm.ops.numba_simd import HAS_AVX2, HAS_F16C, portable_half_to_float32, portable_round_to_half

OPS_DIR = Path(minilm.__file__).resolve().parent / "ops"
HERE = Path(__file__).resolve().parent


def randn(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _attention_inputs(rng, T, S, window):
    q, k, v = randn(rng, 2, T, 4, 16), randn(rng, 2, S, 2, 16), randn(rng, 2, S, 2, 16)
    valid = np.ones((2, S), bool)
    valid[1, :2] = False                                                 # left padding in row 1
    return q, k, v, attention_mask(np.arange(S - T, S), np.arange(S), valid, window)


def _probs(be, q, k, v, mask):
    return be.attention_probs(q, k, mask, 0.25)


def _linear(be, rng, rows, storage, bias):
    weight = be.prepare_weight(quantize(randn(rng, 37, 32, scale=0.2), storage))
    return be.linear(randn(rng, rows, 32), weight, randn(rng, 37) if bias else None)


def _threads(be, rng):
    """Set, read back, clip to 1 .. NUMBA_NUM_THREADS; then the count the process had."""
    previous = be.threads()
    try:
        return np.array([be.threads(1), be.threads(), be.threads(0), be.threads(10 ** 6), be.threads(-2)])
    finally:
        be.threads(previous)


# The quantized formats on the smallest shapes that reach every branch: 37 weight rows (a 32-row job
# and a 5-row one, 6x4 tiles and leftovers), 64 columns (two blocks of 32; int4 with its smallest
# group, 32, switches group once; fp4/nf4 one absmax block of 64); GEMV on 1-3 rows, matmul on 13
# (8-row passes of 4-row groups and a leftover row; 6-row tiles and one leftover row).
QUANTIZED = ("q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4")
FAST = ("q8_0", "q4_0", "q4_1", "int8", "int4")                        # fp4 and nf4 have no fast mode
SIMD = ("native", "vector", "portable")              # fast mode's integer dot products (numba_simd)
# As Python the generic vectors run on a signed and an unsigned format only (every vector function
# once; test_numba_quant.py runs every format compiled on every path): the interpreter is slow.
SIMD_FORMATS = {"native": FAST, "vector": ("q4_0", "q4_1"), "portable": FAST}
OPTIONS = {"int4": {"group_size": 32}}


def _quantized(be, rng, fmt, mode):
    return be.prepare_weight(quantize(randn(rng, 37, 64, scale=0.2), fmt, mode, **OPTIONS.get(fmt, {})))


def _linear_quantized(be, rng, fmt, mode, rows, simd="portable", bias=False):
    weight, x = _quantized(be, rng, fmt, mode), randn(rng, rows, 64)
    previous = numba_quant.use_simd(simd) if mode == "fast" else None
    try:
        return be.linear(x, weight, randn(rng, 37) if bias else None)
    finally:
        if previous:
            numba_quant.use_simd(previous)


def _exact_dot_bnb(be, rng, fmt):
    """fp4/nf4's exact dot with table loads, what CPUs without AVX2 run (here the op table uses vpermps)."""
    w, x2 = numba_quant.kernel_arrays(_quantized(be, rng, fmt, "exact")), randn(rng, 2, 64)
    return np.array([[exact_dot_bnb(w, o, x2, n) for o in range(37)] for n in range(2)], np.float32)


def _portable_fp16(be, rng):
    """The fp16 conversions of CPUs without F16C (here the kernels use vcvtph2ps / vcvtps2ph): normals,
    subnormals, signed zeros, infinities, nan; rounding ties and overflow."""
    bits = np.concatenate([[0, 1, 0x3FF, 0x400, 0x3C00, 0x7BFF, 0x7C00, 0x7E01, 0x8000, 0x8001, 0xFC00, 0xC000],
                           rng.integers(0, 1 << 16, 20)]).astype(np.uint16)
    x = np.concatenate([randn(rng, 20, scale=300.0), randn(rng, 6, scale=1e-5),
                        [0.0, -0.0, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 65504.0, 65519.0, 65520.0, -1e9, np.inf,
                         np.nan]]).astype(np.float32)
    return np.array([portable_half_to_float32(b) for b in bits] + [portable_round_to_half(v) for v in x], np.float32)


# name -> f(backend, rng): each op of the numba backend, on inputs that reach every kernel
# ("kernel ...": a kernel the op table does not reach on this CPU, called directly).
CASES = {
    "rms_norm": lambda be, rng: be.rms_norm(randn(rng, 2, 3, 24), randn(rng, 24), 1e-6),
    "layer_norm": lambda be, rng: be.layer_norm(randn(rng, 2, 3, 24), randn(rng, 24), 1e-5),
    "layer_norm qk": lambda be, rng: be.layer_norm(randn(rng, 2, 3, 4, 8), randn(rng, 4, 8), 1e-5),
    "apply_rope half-split": lambda be, rng: be.apply_rope(randn(rng, 2, 3, 2, 8), *np.cos(randn(rng, 2, 2, 3, 4)),
                                                           False),
    "apply_rope interleaved": lambda be, rng: be.apply_rope(randn(rng, 2, 3, 2, 8), *np.sin(randn(rng, 2, 2, 3, 4)),
                                                            True),
    "attention serial": lambda be, rng: be.attention(*_attention_inputs(rng, 3, 5, None), 0.25),
    "attention threaded": lambda be, rng: be.attention(*_attention_inputs(rng, 8, 40, 6), 0.25),
    "attention_probs": lambda be, rng: _probs(be, *_attention_inputs(rng, 4, 9, 3)),
    "swiglu": lambda be, rng: be.swiglu(randn(rng, 2, 3, 40, scale=4.0), randn(rng, 2, 3, 40)),
    "linear gemv": lambda be, rng: _linear(be, rng, 3, "float32", True),
    "linear gemv bf16": lambda be, rng: _linear(be, rng, 2, "bfloat16", False),
    "linear matmul": lambda be, rng: _linear(be, rng, 13, "float32", True),
    "linear matmul bf16": lambda be, rng: _linear(be, rng, 9, "bfloat16", False),
    "embedding": lambda be, rng: be.embedding(np.array([[0, 5], [6, 5]]),
                                              be.prepare_weight(quantize(randn(rng, 7, 16), "float32"))),
    "embedding bf16": lambda be, rng: be.embedding(np.array([[3, 1]]),
                                                   be.prepare_weight(quantize(randn(rng, 7, 16), "bfloat16"))),
    **{f"linear {fmt} exact gemv": lambda be, rng, fmt=fmt, i=i: _linear_quantized(be, rng, fmt, "exact", 1 + i % 3,
                                                                                   bias=i % 2 == 0)
       for i, fmt in enumerate(QUANTIZED)},
    **{f"linear {fmt} exact matmul": lambda be, rng, fmt=fmt, i=i: _linear_quantized(be, rng, fmt, "exact", 13,
                                                                                     bias=i % 2 == 1)
       for i, fmt in enumerate(QUANTIZED)},
    **{f"linear {fmt} fast {simd} gemv": lambda be, rng, fmt=fmt, i=i, simd=simd: _linear_quantized(
        be, rng, fmt, "fast", 1 + i % 3, simd, bias=i % 2 == 0) for i, fmt in enumerate(FAST) for simd in SIMD
        if fmt in SIMD_FORMATS[simd]},
    **{f"linear {fmt} fast {simd} matmul": lambda be, rng, fmt=fmt, i=i, simd=simd: _linear_quantized(
        be, rng, fmt, "fast", 13, simd, bias=i % 2 == 1) for i, fmt in enumerate(FAST) for simd in SIMD
        if fmt in SIMD_FORMATS[simd]},
    **{f"embedding {fmt}": lambda be, rng, fmt=fmt: be.embedding(np.array([[36, 0, 5], [5, 17, 1]]),
                                                                 _quantized(be, rng, fmt, "exact"))
       for fmt in QUANTIZED},
    **({"kernel exact_dot_bnb fp4": lambda be, rng: _exact_dot_bnb(be, rng, "fp4"),
        "kernel exact_dot_bnb nf4": lambda be, rng: _exact_dot_bnb(be, rng, "nf4")} if HAS_AVX2 else {}),
    **({"kernel portable fp16": _portable_fp16} if HAS_F16C else {}),
    "scale_logits": lambda be, rng: be.scale_logits(randn(rng, 2, 3, 50), 0.0625),
    "argmax": lambda be, rng: be.argmax(np.array([[1.0, 3.0, 3.0, 2.0], [0.0, np.nan, 5.0, 1.0]], np.float32)),
    "top_k_filter": lambda be, rng: be.top_k_filter(randn(rng, 3, 50), 7),
    "top_p_filter": lambda be, rng: be.top_p_filter(randn(rng, 3, 50), 0.8),
    "asarray to_numpy": lambda be, rng: be.to_numpy(be.asarray(randn(rng, 4))),
    "threads": _threads,
    "supports": lambda be, rng: np.array([be.supports("float32", "exact"), be.supports("bfloat16", "fast")]),
    "prepare_weight": lambda be, rng: be.prepare_weight(quantize(randn(rng, 4, 8), "float32")).data,
}


def run_cases() -> dict[str, np.ndarray]:
    from minilm.backends import get_backend
    backend = get_backend("numba")
    return {name: np.asarray(case(backend, np.random.default_rng(7))) for name, case in CASES.items()}


def njit_functions() -> set[str]:
    """'numba_attention.attention_row', ...: every function decorated with njit in minilm/ops/numba_*.py."""
    jit = ("njit", "jit", "numba.njit", "numba.jit")
    found = set()
    for path in sorted(OPS_DIR.glob("numba_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(ast.unparse(d).startswith(jit) for d in node.decorator_list):
                found.add(f"{path.stem}.{node.name}")
    return found


def overload_stubs() -> set[str]:
    """'numba_quant_rows.exact_dot', ...: every function an @overload in minilm/ops/numba_*.py implements."""
    found = set()
    for path in sorted(OPS_DIR.glob("numba_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "overload":
                found.add(f"{path.stem}.{ast.unparse(node.args[0])}")
    return found


def ops_modules() -> list:
    import importlib
    return [importlib.import_module(f"minilm.ops.{path.stem}") for path in sorted(OPS_DIR.glob("numba_*.py"))]


def intrinsics_left() -> list[str]:
    """Names in minilm/ops/numba_*.py still bound to an @intrinsic (one that has no Python twin)."""
    from numba.core.extending import _Intrinsic
    return sorted(f"{m.__name__}.{name}" for m in ops_modules() for name, value in vars(m).items()
                  if isinstance(value, _Intrinsic))


def sabotage_bf16_twin() -> list[str]:
    """Replace the Python twin of the bf16 intrinsic by a wrong one (the bits read as a number) under every
    name the kernels reach it by; returns those names."""
    from minilm.ops import numba_math
    twin = numba_math.bf16_bits_to_float32
    assert twin is numba_math._bf16_bits_to_float32_python, "the child does not run the bf16 twin"
    names = []
    for module in ops_modules():
        for name, value in list(vars(module).items()):
            if value is twin:
                setattr(module, name, lambda bits: np.float32(bits))
                names.append(f"{module.__name__}.{name}")
    return names


def child_main(out_path: str, sabotage: bool = False) -> None:
    """In the NUMBA_DISABLE_JIT=1 process: run every case as Python, note each kernel that ran.
    sabotage: a wrong Python twin of the bf16 intrinsic, for the negative control."""
    import numba
    assert numba.config.DISABLE_JIT, "the child must run with NUMBA_DISABLE_JIT=1"
    sabotaged = sabotage_bf16_twin() if sabotage else []
    called = set()

    stems = {}                                                            # file -> its stem if in ops/, else None

    def trace(frame, event, arg):                     # called per Python frame only (no C calls), no line tracing
        file = frame.f_code.co_filename
        if file not in stems:
            stems[file] = Path(file).stem if Path(file).resolve().parent == OPS_DIR else None
        if stems[file]:
            called.add(f"{stems[file]}.{frame.f_code.co_name}")
    sys.settrace(trace)
    results = run_cases()
    sys.settrace(None)
    np.savez(out_path, **results, __called__=np.array(sorted(called)), __intrinsics__=np.array(intrinsics_left()),
             __sabotaged__=np.array(sabotaged))


def run_interpreted(folder: Path, sabotage: bool = False) -> dict[str, np.ndarray]:
    """CASES in a child process with NUMBA_DISABLE_JIT=1 -> {case: output, "__called__": function names}."""
    out = folder / f"interpreted-{sabotage}.npz"
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_numba_jit_disabled as t; " \
           f"t.child_main({str(out)!r}, sabotage={sabotage})"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
        return {name: saved[name] for name in saved.files}


def assert_same(got: np.ndarray, compiled: np.ndarray) -> None:
    assert got.shape == compiled.shape and got.dtype == compiled.dtype
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, compiled, rtol=1e-5, atol=1e-6)   # fastmath reassociates float sums
    else:
        np.testing.assert_array_equal(got, compiled)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    return run_interpreted(tmp_path_factory.mktemp("nojit"))


@pytest.fixture(scope="module")
def compiled():
    return run_cases()


def test_every_op_of_the_numba_backend_has_a_case():
    assert {name.split()[0] for name in CASES} | {"asarray", "to_numpy"} >= set(OPS)


def level_kernels(level: str) -> set:
    """The njit functions of one SIMD level's block dot products (numba_simd.BLOCK_DOTS)."""
    dot = numba_simd.BLOCK_DOTS[level]
    functions = (dot.signed, dot.unsigned, dot.operands_signed, dot.operands_unsigned, dot.pair)
    return {f"numba_simd.{f.__name__}" for f in functions}


# Kernels only another CPU runs: bnb's vpermps lookups need AVX2; each SIMD level's block dot
# products run on their own CPUs (here: the native level and the generic vectors).
AVX2_ONLY = {"numba_quant_rows.exact_dot_bnb_avx2"}
AVX512_PAIRS = {f"numba_quant_rows.{name}" for name in ("fast_dot_ggml_pairs", "fast_dot_q4_0_pairs",
                                                        "fast_dot_q4_1_pairs", "pair_scales")}
OTHER_LEVELS = set().union(*map(level_kernels, numba_simd.BLOCK_DOTS)) - level_kernels(numba_simd.SIMD_LEVEL) \
    - level_kernels("vector") | (AVX512_PAIRS if numba_simd.SIMD_LEVEL != "avx512-vnni" else set())


def test_every_njit_kernel_ran_as_python(interpreted):
    kernels = njit_functions()
    assert "numba_attention.probs_row" in kernels and "numba_math.exp_f32" in kernels   # the AST scan works
    assert AVX2_ONLY | OTHER_LEVELS <= kernels, f"names no kernel: {sorted(AVX2_ONLY | OTHER_LEVELS - kernels)}"
    missing = kernels - set(interpreted["__called__"]) - (set() if HAS_AVX2 else AVX2_ONLY) - OTHER_LEVELS
    assert not missing, f"kernels no case ran with NUMBA_DISABLE_JIT=1: {sorted(missing)}"


def test_every_intrinsic_and_overload_has_a_python_twin(interpreted):
    """As Python an @intrinsic raises and an @overload stub returns None: each must be bound to its twin."""
    assert not interpreted["__intrinsics__"].size, f"@intrinsics without a python_when_jit_disabled twin: " \
                                                   f"{list(interpreted['__intrinsics__'])}"
    stubs = overload_stubs()
    assert {"numba_math.as_float32", "numba_quant_rows.fast_dot4"} <= stubs            # the AST scan works
    ran = stubs & set(interpreted["__called__"])
    assert not ran, f"@overload stubs ran as Python (no python_when_jit_disabled twin): {sorted(ran)}"


def test_threads_case_sets_and_clips(compiled):
    import numba
    assert list(compiled["threads"]) == [1, 1, 1, numba.config.NUMBA_NUM_THREADS, 1]


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_kernel_agrees_with_compiled(interpreted, compiled, case):
    assert_same(interpreted[case], compiled[case])


def test_negative_control_a_wrong_python_twin_is_caught(tmp_path, compiled):
    sabotaged = run_interpreted(tmp_path, sabotage=True)
    assert {"minilm.ops.numba_math.bf16_bits_to_float32",                   # the names the kernels call it by
            "minilm.ops.numba_quant_rows.bf16_bits_to_float32"} <= set(sabotaged["__sabotaged__"])
    assert_same(sabotaged["linear gemv"], compiled["linear gemv"])          # float32 weights: untouched
    for case in ("embedding bf16", "linear gemv bf16", "linear int4 exact matmul", "linear int4 fast portable gemv"):
        with pytest.raises(AssertionError):                                 # bf16 weights; int4's bf16 scales
            assert_same(sabotaged[case], compiled[case])
