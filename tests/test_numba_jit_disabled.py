"""Every Numba kernel also runs as plain Python (NUMBA_DISABLE_JIT=1, how you step through one in a
debugger: docs/debugging.md) and gives what its compiled self gives on small inputs.

A child process with NUMBA_DISABLE_JIT=1 runs CASES through the numba backend's op table, records
which functions were called (sys.setprofile), and saves the outputs; this process runs the same
CASES compiled and compares. The cases take every path: GEMV and tiled matmul, float32 and bf16
weights, serial and threaded attention, both RoPE layouts. Every @njit function in
minilm/ops/numba_*.py must have run in the child, so a new kernel file (numba_quant.py) fails
here, naming its kernels, until CASES covers them.
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
from minilm.ops.attention import attention_mask
from minilm.ops.contract import OPS

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


# name -> f(backend, rng): each op of the numba backend, on inputs that reach every kernel.
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
    "scale_logits": lambda be, rng: be.scale_logits(randn(rng, 2, 3, 50), 0.0625),
    "argmax": lambda be, rng: be.argmax(np.array([[1.0, 3.0, 3.0, 2.0], [0.0, np.nan, 5.0, 1.0]], np.float32)),
    "top_k_filter": lambda be, rng: be.top_k_filter(randn(rng, 3, 50), 7),
    "top_p_filter": lambda be, rng: be.top_p_filter(randn(rng, 3, 50), 0.8),
    "asarray to_numpy": lambda be, rng: be.to_numpy(be.asarray(randn(rng, 4))),
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


def child_main(out_path: str, sabotage: bool = False) -> None:
    """In the NUMBA_DISABLE_JIT=1 process: run every case as Python, note each kernel that ran.
    sabotage: a wrong Python twin of the bf16 intrinsic (the bits read as a number), for the negative control."""
    import numba
    assert numba.config.DISABLE_JIT, "the child must run with NUMBA_DISABLE_JIT=1"
    if sabotage:
        from minilm.ops import numba_linear
        numba_linear.bf16_bits_to_float32 = lambda bits: np.float32(bits)
    called = set()

    def profile(frame, event, arg):
        if event == "call" and Path(frame.f_code.co_filename).parent == OPS_DIR:
            called.add(f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}")
    sys.setprofile(profile)
    results = run_cases()
    sys.setprofile(None)
    np.savez(out_path, **results, __called__=np.array(sorted(called)))


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


def test_every_njit_kernel_ran_as_python(interpreted):
    kernels = njit_functions()
    assert "numba_attention.probs_row" in kernels and "numba_math.exp_f32" in kernels   # the AST scan works
    missing = kernels - set(interpreted["__called__"])
    assert not missing, f"kernels no case ran with NUMBA_DISABLE_JIT=1: {sorted(missing)}"


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_kernel_agrees_with_compiled(interpreted, compiled, case):
    assert_same(interpreted[case], compiled[case])


def test_negative_control_a_wrong_python_twin_is_caught(tmp_path, compiled):
    sabotaged = run_interpreted(tmp_path, sabotage=True)
    assert_same(sabotaged["linear gemv"], compiled["linear gemv"])          # float32 weights: untouched
    with pytest.raises(AssertionError):
        assert_same(sabotaged["embedding bf16"], compiled["embedding bf16"])
