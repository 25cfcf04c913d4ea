"""The CUDA kernels for quantized weights (kernels/quant.cu, quant_fast.cu) equal the NumPy reference.

exact: x @ decode(W)^T; fast: the format's `Format.fast` reference (llama.cpp's int8-activation
arithmetic, itself checked against gguf-py / llama.cpp in test_formats.py). Up to 8 rows of x
run the GEMV kernels, more the tiled ones; OUT = 61 leaves a partial warp block and partial tiles.
Runs on the CPU harness ("cuda-emulated": every launch in forward and reverse thread order,
outputs poisoned with NaN) and, when CuPy sees a GPU, on the device ("cuda").

Tolerance, as in test_numba_quant.py: |got - want| <= 1e-4 * max(1, max |want|). The kernels add
the same float32 products in another order than NumPy (and a GPU contracts multiply-adds), which
moves results by float32 rounding of the sums; a wrong code, scale, nibble or block moves them by
the order of the output itself (the negative controls below show it).
"""
import numpy as np
import pytest

import cupy  # noqa: F401

import minilm  # noqa: E402
from minilm.cuda import gpu_available, registry  # noqa: E402
from minilm.cuda.backend import CudaBackend  # noqa: E402
from minilm.cuda.emulator import DeviceAssertError, EmulatedModule  # noqa: E402
from minilm.formats import FORMATS, UnsupportedFormatError, quantize  # noqa: E402
from minilm.formats.ggml import quantize_activations  # noqa: E402
from minilm.testing import random_checkpoint, tiny_checkpoint, tiny_config  # noqa: E402
from conftest import assert_logits_close, incremental_logits, left_padded_batch  # noqa: E402

QUANT = ("q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4")
CASES = [(f, m) for f in QUANT for m in ("exact", "fast") if m == "exact" or f in registry.FAST_QUANT_FORMATS]
OPTIONS = {"int4": {"group_size": 64}}
OUT, IN = 61, 192


@pytest.fixture(scope="module", params=["cuda-emulated", "cuda"])
def backend(request):
    if request.param == "cuda" and not gpu_available():
        pytest.skip("no GPU visible to CuPy: the cuda-emulated run covers these kernels")
    return CudaBackend(emulated=request.param == "cuda-emulated")   # the class: its launch helpers too


def close(got, want, tol=1e-4):
    return np.abs(got - want).max() <= tol * max(1.0, float(np.abs(want).max()))


def error(got, want):
    return np.abs(got - want).max() / max(1.0, float(np.abs(want).max()))


def reference(x2, weight, bias=None):
    want = x2 @ weight.dequantize().T if weight.mode == "exact" else FORMATS[weight.format].fast(x2, weight)
    return want if bias is None else want + bias


def run(backend, x2, weight, bias=None):
    """The backend's linear on host inputs (the weight prepared here), as a host array."""
    prepared = backend.prepare_weight(weight)
    out = backend.linear(backend.asarray(x2), prepared, None if bias is None else backend.asarray(bias))
    return backend.to_numpy(out)


@pytest.fixture(scope="module")
def weights():
    w = (np.random.default_rng(0).standard_normal((OUT, IN)) * 0.3).astype(np.float32)
    return {(f, m): quantize(w, f, mode=m, **OPTIONS.get(f, {})) for f, m in CASES}


# --- linear ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,mode", CASES)
@pytest.mark.parametrize("rows", [1, 3, 9, 33])        # GEMV (<= 8 rows) and tiled, with partial tiles
def test_linear_equals_reference(backend, weights, fmt, mode, rows):
    rng = np.random.default_rng(rows)
    weight = weights[(fmt, mode)]
    x2 = (rng.standard_normal((rows, IN)) * 2).astype(np.float32)
    bias = rng.standard_normal(OUT).astype(np.float32)
    for b in (None, bias):
        got, want = run(backend, x2, weight, b), reference(x2, weight, b)
        assert got.shape == want.shape and close(got, want), (fmt, mode, rows, error(got, want))


@pytest.mark.parametrize("fmt,mode", CASES)
def test_long_rows_and_leading_axes(backend, fmt, mode):
    """70 blocks of 32 per row: each lane of a GEMV warp takes three blocks; x [2, 1, IN] and [2, 5, IN]."""
    rng = np.random.default_rng(1)
    weight = quantize(rng.standard_normal((5, 2240)).astype(np.float32), fmt, mode=mode, **OPTIONS.get(fmt, {}))
    prepared = backend.prepare_weight(weight)
    for tokens in (1, 5):
        x = rng.standard_normal((2, tokens, 2240)).astype(np.float32)
        got = backend.to_numpy(backend.linear(backend.asarray(x), prepared))
        want = reference(x.reshape(-1, 2240), weight).reshape(2, tokens, 5)
        assert close(got, want), (fmt, mode, tokens, error(got, want))


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_group_sizes(backend, mode, group_size):
    rng = np.random.default_rng(group_size)
    weight = quantize(rng.standard_normal((7, 256)).astype(np.float32), "int4", mode=mode, group_size=group_size)
    for rows in (2, 9):
        x2 = rng.standard_normal((rows, 256)).astype(np.float32)
        assert close(run(backend, x2, weight), reference(x2, weight)), (mode, group_size, rows)


def test_int8_exact_rows_that_end_in_a_partial_block(backend):
    rng = np.random.default_rng(2)
    weight = quantize(rng.standard_normal((9, 70)).astype(np.float32), "int8")
    for rows in (1, 4, 11):
        x2 = rng.standard_normal((rows, 70)).astype(np.float32)
        assert close(run(backend, x2, weight), reference(x2, weight)), rows


def test_fast_activations_are_the_references_bit_for_bit(backend):
    """quantize_activations: halves to even (x * 127/a = k + 1/2 exactly), an all-zero block, fp16 d and s."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 128)) * 3).astype(np.float32)
    x[0, :32] = 0.0                                                        # a = 0: codes 0, d = s = 0
    x[1, :32] = np.arange(32, dtype=np.float32) - 15.5                     # a = 16.5 -> 127/a inexact
    x[2, :8] = [127.0, 0.5, 1.5, 2.5, -2.5, -0.5, 3.5, 126.5]              # a = 127: x * 1 lands on halves
    want_q, want_d, want_s = quantize_activations(x)
    assert not np.array_equal(np.rint(x[2, :8]), np.trunc(x[2, :8] + np.sign(x[2, :8]) * 0.5)), \
        "the ties must tell halves-to-even from halves-away-from-zero"
    xq, xd, xs = backend._quantize_activations(backend.asarray(x), x.size // 32)
    assert np.array_equal(backend.to_numpy(xq).reshape(want_q.shape), want_q)
    assert np.array_equal(backend.to_numpy(xd).view(np.uint32), want_d.reshape(-1).view(np.uint32))
    assert np.array_equal(backend.to_numpy(xs).view(np.uint32), want_s.reshape(-1).view(np.uint32))


DP4A_SOURCE = r"""
extern "C" __global__ void dp4a_both(const int* a, const int* b, const int* c, int* signed_out,
                                      unsigned* unsigned_out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    signed_out[i] = __dp4a(a[i], b[i], c[i]);
    unsigned_out[i] = __dp4a((unsigned)a[i], (unsigned)b[i], (unsigned)c[i]);
}
"""


def test_dp4a_is_four_byte_products_plus_c(backend):
    """The harness's __dp4a (added for these kernels) and, on a GPU, the instruction: the same sums."""
    rng = np.random.default_rng(4)
    a, b, c = (rng.integers(-2**31, 2**31, 100, dtype=np.int64).astype(np.int32) for _ in range(3))
    c = c // 4                                                            # no overflow in the signed sum
    signed, unsigned = backend._empty((100,), np.int32), backend._empty((100,), np.uint32)
    module = backend._new_module(DP4A_SOURCE, ["dp4a_both"])
    module.get_function("dp4a_both")((1,), (128,), tuple(backend.asarray(v) for v in (a, b, c)) +
                                     (signed, unsigned, np.int32(100)))
    sb = lambda v: v.view(np.int8).reshape(-1, 4).astype(np.int64)       # noqa: E731  (little-endian bytes)
    ub = lambda v: v.view(np.uint8).reshape(-1, 4).astype(np.int64)      # noqa: E731
    assert np.array_equal(backend.to_numpy(signed), ((sb(a) * sb(b)).sum(1) + c).astype(np.int32))
    assert np.array_equal(backend.to_numpy(unsigned),
                          ((ub(a) * ub(b)).sum(1) + c.view(np.uint32)).astype(np.uint64).astype(np.uint32))


# --- embedding ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", QUANT)
def test_embedding_gathers_decoded_rows(backend, weights, fmt):
    table = weights[(fmt, "exact")]
    ids = np.array([[0, 60, 7], [7, 33, 1]])
    got = backend.to_numpy(backend.embedding(backend.asarray(ids), backend.prepare_weight(table)))
    want = table.dequantize()[ids]
    # A GPU may fuse d * n + m into one multiply-add: equal up to one rounding.
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_embedding_out_of_range_id_asserts(backend, weights):
    if backend.name != "cuda-emulated":
        pytest.skip("a device assert poisons the CUDA context; shown on the harness only")
    with pytest.raises(DeviceAssertError, match="id >= 0 && id < vocab"):
        backend.embedding(np.array([[1, OUT]]), backend.prepare_weight(weights[("q4_0", "exact")]))


# --- what is supported, and refusals --------------------------------------------------------

def test_supports_every_format_in_the_modes_with_kernels(backend):
    for fmt in QUANT:
        assert backend.supports(fmt, "exact")
        assert backend.supports(fmt, "fast") == (fmt not in ("fp4", "nf4"))
    assert not backend.supports("q4_k", "exact")


def test_prepare_weight_moves_every_array_and_refuses_what_has_no_kernel(backend, weights):
    weight = weights[("int4", "fast")]
    prepared = backend.prepare_weight(weight)
    assert prepared.format == "int4" and prepared.mode == "fast" and set(prepared.arrays) == set(weight.arrays)
    for name, array in weight.arrays.items():
        assert isinstance(prepared.arrays[name], type(backend.asarray(np.zeros(1)))) and \
            np.array_equal(backend.to_numpy(prepared.arrays[name]), array)
    with pytest.raises(UnsupportedFormatError, match=rf"backend '{backend.name}' does not run weight format 'nf4' "
                                                     "in fast mode"):
        backend.prepare_weight(quantize(np.ones((2, 64), np.float32), "nf4", mode="fast"))
    with pytest.raises(UnsupportedFormatError, match="'int8' in fast mode .* blocks of 32; got a row length of 48"):
        backend.prepare_weight(quantize(np.ones((2, 48), np.float32), "int8", mode="fast"))


def test_linear_refuses_mismatched_or_half_activations(backend, weights):
    prepared = backend.prepare_weight(weights[("q8_0", "exact")])
    with pytest.raises(ValueError, match="does not match"):
        backend.linear(backend.asarray(np.zeros((1, IN + 32), np.float32)), prepared)
    with pytest.raises(TypeError, match="float32 activations"):
        backend.linear(backend.asarray(np.zeros((1, IN), np.float16)), prepared)


# --- negative controls: broken kernels must fail the comparisons above ------------------------

BROKEN = {
    # q4_0/q4_1: high nibbles read as weights 0..15 and low ones as 16..31
    "gguf nibble order": ("(w < 4 ? bytes : bytes >> 4)", "(w < 4 ? bytes >> 4 : bytes)", "q4_0"),
    # fp4/nf4: the first weight of a byte read from the low nibble
    "bnb nibble order": ("k % 2 == 0 ? byte >> 4 : byte & 0x0F", "k % 2 == 0 ? byte & 0x0F : byte >> 4", "nf4"),
    # q4_1: each block's minimum taken from its neighbour (blocks 0<->1, 2<->3, ...)
    "neighbouring block's minimum": ("half_at(block(row, b) + 2)", "half_at(block(row, b ^ 1) + 2)", "q4_1"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_negative_control_a_broken_kernel_fails_the_comparison(weights, case):
    right, wrong, fmt = BROKEN[case]
    source = registry.module_source("quant")
    assert source.count(right) == 1, f"the text to break is no longer in quant.cuh: {right!r}"
    name = registry.quant_name("quant_gemv", fmt)
    backend = CudaBackend(emulated=True)
    backend._modules["quant"] = EmulatedModule(source.replace(right, wrong), [name])   # only what this test runs
    x2 = np.random.default_rng(5).standard_normal((3, IN)).astype(np.float32)
    got, want = run(backend, x2, weights[(fmt, "exact")]), reference(x2, weights[(fmt, "exact")])
    assert not close(got, want) and error(got, want) > 1e-2, (case, error(got, want))


# --- whole models -----------------------------------------------------------------------------
# Exact mode everywhere. Fast mode on the harness only: the int8 activations are rounded from
# float32 values that differ from NumPy's in the last bits (other summation orders; a GPU also
# fuses multiply-adds), and a value within that distance of a rounding half flips one code, which
# moves the logits by ~1e-3. On the harness none flips for these checkpoints (measured: 1.5e-6 with
# quantize="q4_1", 0 on the GGUF), and the run is deterministic; on a GPU a flip is a matter of
# chance, so there the fast kernels are checked op by op (identical inputs -> identical codes).

def assert_model_matches_numpy(path, backend_name, **options):
    reference = minilm.load(path, backend="numpy", progress=False, **options)
    model = minilm.load(path, backend=backend_name, progress=False, **options)
    ids, mask = left_padded_batch(length=10)
    keep = mask.astype(bool)
    assert_logits_close(model(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits, keep)
    assert_logits_close(incremental_logits(model, ids, mask, 6), incremental_logits(reference, ids, mask, 6), keep)
    return model


@pytest.fixture(params=[("cuda-emulated", "exact"), ("cuda-emulated", "fast"), ("cuda-glue", "exact"),
                        ("cuda", "exact")], ids="-".join)
def model_backend(request, monkeypatch):
    """(backend name, mode); "cuda-glue" runs the GPU backend's glue over the harness with a strict
    stand-in for CuPy (test_cuda_model.py), to catch host arrays handed to CuPy."""
    name, mode = request.param
    if name == "cuda" and not gpu_available():
        pytest.skip("no GPU visible to CuPy: the cuda-emulated run covers these kernels")
    if name == "cuda-glue":
        from test_cuda_model import gpu_glue_backend
        monkeypatch.setattr("minilm.cuda.backend.make_cuda_backend", gpu_glue_backend)
        name = "cuda"
    return name, mode


def test_tiny_llama_quantized_on_load_equals_numpy(model_backend, tmp_path):
    name, mode = model_backend
    model = assert_model_matches_numpy(tiny_checkpoint("llama", tmp_path), name, quantize="q4_1", mode=mode)
    weight = model.weights["model.layers.1.mlp.down_proj.weight"]
    assert (weight.format, weight.mode) == ("q4_1", mode)


def test_tiny_torchao_int4_checkpoint_equals_numpy(model_backend, tmp_path):
    """int4 as torchao stores it: memory-mapped, its scale and zero are transposed views of the file
    (Fortran order); the backend hands the kernels contiguous copies."""
    name, mode = model_backend
    model = assert_model_matches_numpy(random_checkpoint(tiny_config("llama"), tmp_path, dtype="int4"), name,
                                       mode=mode)
    weight = model.weights["model.layers.1.mlp.down_proj.weight"]
    assert (weight.format, weight.mode) == ("int4", mode)


def test_tiny_gguf_as_stored_equals_numpy(model_backend, tmp_path):
    """Every matrix in q4_0 blocks, the embedding too (its rows decoded by quant_embedding)."""
    name, mode = model_backend
    model = assert_model_matches_numpy(random_checkpoint(tiny_config("llama"), tmp_path, dtype="q4_0"), name,
                                       mode=mode)
    weights = [model.weights[n] for n in ("model.embed_tokens.weight", "lm_head.weight",
                                          "model.layers.0.self_attn.q_proj.weight")]
    assert {(w.format, w.mode) for w in weights} == {("q4_0", mode)}
