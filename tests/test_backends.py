"""The op contract (minilm/ops/contract.py): every backend provides every op with the contract's
signature, and each op agrees with the NumPy reference on random inputs.

One case per op below; a new op without a case fails `test_every_op_has_a_case`. Edge cases
(odd sizes, masks, windows, bf16) live in the per-backend test files.
"""
import inspect

import numpy as np
import pytest

from minilm.backends import get_backend
from minilm.cuda import gpu_available
from minilm.errors import UnsupportedFormatError
from minilm.formats import FORMATS, quantize
from minilm.ops.attention import attention_mask
from minilm.ops.contract import OPS, Ops, build_backend

REF = get_backend("numpy")
BACKENDS = ["numba", "cuda-emulated"] + (["cuda"] if gpu_available() else [])


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return get_backend(request.param)


def randn(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def run(be, op, rng):
    """Call `op` of backend `be` on inputs drawn from rng; returns a host result."""
    x = randn(rng, 2, 5, 64, scale=2.0)
    if op == "rms_norm":
        return be.rms_norm(be.asarray(x), be.asarray(randn(rng, 64)), 1e-6)
    if op == "layer_norm":
        return be.layer_norm(be.asarray(x.reshape(2, 5, 4, 16)), be.asarray(randn(rng, 4, 16)), 1e-5)
    if op == "apply_rope":
        angles = rng.uniform(0, 20, (2, 5, 8)).astype(np.float32)
        return be.apply_rope(be.asarray(x.reshape(2, 5, 4, 16)), be.asarray(np.cos(angles)),
                             be.asarray(np.sin(angles)), True)
    if op == "attention":
        q, k, v = randn(rng, 2, 5, 4, 16), randn(rng, 2, 9, 2, 16), randn(rng, 2, 9, 2, 16)
        mask = attention_mask(np.arange(4, 9), np.arange(9), np.ones((2, 9), bool), window=3)
        return be.attention(be.asarray(q), be.asarray(k), be.asarray(v), be.asarray(mask), 0.25)
    if op == "attention_probs":
        q, k = randn(rng, 2, 5, 4, 16), randn(rng, 2, 9, 2, 16)
        key_valid = np.ones((2, 9), bool)
        key_valid[1, :6] = False                                   # row 1's first query sees nothing
        mask = attention_mask(np.arange(4, 9), np.arange(9), key_valid, window=3)
        return be.attention_probs(be.asarray(q), be.asarray(k), be.asarray(mask), 0.25)
    if op == "swiglu":
        return be.swiglu(be.asarray(x), be.asarray(randn(rng, 2, 5, 64)))
    if op == "linear":
        weight = be.prepare_weight(quantize(randn(rng, 48, 64, scale=0.2), "float32"))
        return be.linear(be.asarray(x), weight, be.asarray(randn(rng, 48)))
    if op == "embedding":
        table = be.prepare_weight(quantize(randn(rng, 31, 64), "bfloat16"))
        return be.embedding(be.asarray(np.array([[0, 30], [7, 7]])), table)
    if op == "scale_logits":
        return be.scale_logits(be.asarray(x), 0.0625)
    if op == "argmax":
        return be.argmax(be.asarray(randn(rng, 3, 100)))
    if op == "top_k_filter":
        return be.top_k_filter(randn(rng, 3, 100), 7)
    if op == "top_p_filter":
        return be.top_p_filter(randn(rng, 3, 100), 0.8)
    if op in ("asarray", "to_numpy"):
        return be.to_numpy(be.asarray(x))
    if op == "threads":
        return np.array(be.threads() >= 1 and be.threads(1) == 1)
    if op == "supports":
        return np.array(be.supports("float32", "exact") and be.supports("bfloat16", "exact"))
    if op == "prepare_weight":
        return be.prepare_weight(quantize(x[0], "float32")).dequantize() if be is REF else \
            be.to_numpy(be.prepare_weight(quantize(x[0], "float32")).data)
    raise AssertionError(f"no case for op {op!r}")


def test_every_op_has_a_case():
    for op in OPS:
        run(REF, op, np.random.default_rng(0))


@pytest.mark.parametrize("op", OPS)
def test_op_agrees_with_the_reference(backend, op):
    got = np.asarray(backend.to_numpy(run(backend, op, np.random.default_rng(1))))
    expected = np.asarray(run(REF, op, np.random.default_rng(1)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_every_backend_has_exactly_the_contract(backend):
    names = set(vars(backend)) - {"name"}
    assert names == set(OPS)
    for op in OPS:
        contract = [p for p in inspect.signature(getattr(Ops, op)).parameters if p != "self"]
        assert list(inspect.signature(getattr(backend, op)).parameters) == contract, op


def test_build_backend_refuses_an_incomplete_or_misnamed_table():
    table = {op: getattr(REF, op) for op in OPS}
    with pytest.raises(TypeError, match=r"missing ops \['swiglu'\]"):
        build_backend("broken", {k: v for k, v in table.items() if k != "swiglu"})
    with pytest.raises(TypeError, match=r"rms_norm\('x', 'w', 'eps'\) does not match the contract"):
        build_backend("broken", {**table, "rms_norm": lambda x, w, eps: x})


def test_numpy_reference_runs_every_format():
    assert all(REF.supports(f, "exact") for f in FORMATS)
    fast = {f for f in FORMATS if REF.supports(f, "fast")}
    assert fast == {"q8_0", "q4_0", "q4_1", "int8", "int4"}      # each has a fast reference; fp4/nf4 have none


def test_an_unsupported_format_is_refused_naming_backend_and_format(backend):
    weight = quantize(np.ones((4, 64), np.float32), "float16")
    if not backend.supports("float16", "exact"):
        with pytest.raises(UnsupportedFormatError, match=rf"backend '{backend.name}' does not run weight format "
                                                         r"'float16'"):
            backend.prepare_weight(weight)
    weird = quantize(np.ones((4, 64), np.float32), "float32").with_arrays()
    weird.format = "made-up"
    with pytest.raises(UnsupportedFormatError, match=r"'made-up'"):
        backend.prepare_weight(weird)


def test_negative_control_a_wrong_kernel_fails_the_comparison():
    # RMSNorm whose mean runs over the whole tensor instead of each row: the comparison must catch it.
    table = {op: getattr(REF, op) for op in OPS}
    table["rms_norm"] = lambda x, weight, eps: weight * x / np.sqrt(np.mean(x * x) + eps)
    broken = build_backend("broken", table)
    got = run(broken, "rms_norm", np.random.default_rng(1))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got, run(REF, "rms_norm", np.random.default_rng(1)), rtol=1e-5, atol=1e-5)
