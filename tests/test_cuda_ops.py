"""Every CUDA kernel (through the backend) against the NumPy reference op.

Runs on the CPU harness ("cuda-emulated", every launch in forward and reverse
thread order, outputs poisoned with NaN) and, when CuPy sees a GPU, on the
device ("cuda") with the same assertions. Small odd shapes, T = 1 and T > 1,
window edges, padded rows, GQA/MQA, several key tiles; float32, float16 and
bfloat16 storage against the reference run on the same rounded inputs.
"""
import numpy as np
import pytest

import cupy  # noqa: F401

from minilm.cuda import NoGpuError, gpu_available, make_cuda_backend  # noqa: E402
from minilm.cuda.backend import CudaBackend  # noqa: E402
from minilm.formats import quantize  # noqa: E402
from minilm.formats.bfloat16 import bfloat16_to_float32, to_bfloat16  # noqa: E402
from minilm.cuda.emulator import DeviceAssertError  # noqa: E402
from minilm.ops import attention as ref_attention  # noqa: E402
from minilm.ops import linear as ref_linear  # noqa: E402
from minilm.ops import mlp, norm, rope, sampling  # noqa: E402

TOLERANCE = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 2e-2}   # relative to the largest |value|
HALF = ["float16", "bfloat16"]


@pytest.fixture(scope="module", params=["cuda-emulated", "cuda"])
def backend(request):
    if request.param == "cuda" and not gpu_available():
        pytest.skip("no GPU visible to CuPy: the cuda-emulated run covers these kernels")
    be = CudaBackend(emulated=request.param == "cuda-emulated")   # the class: its launch helpers too
    be.compile_all()
    return be


def randn(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def store(array, dtype):
    """float32 host array -> storage dtype (bfloat16 as uint16 bits)."""
    if dtype == "bfloat16":
        return to_bfloat16(array)
    return array.astype(np.float16 if dtype == "float16" else np.float32)


def as_f32(array):
    """What a stored array holds, as float32 (the reference works on these rounded values)."""
    return bfloat16_to_float32(array) if array.dtype == np.uint16 else array.astype(np.float32)


def check(backend, got, expected, dtype="float32"):
    got = as_f32(backend.to_numpy(got))
    assert got.shape == expected.shape
    error = np.abs(got - expected).max() / max(1.0, np.abs(expected).max())
    assert error < TOLERANCE[dtype], f"relative error {error:.3g} > {TOLERANCE[dtype]}"


def dev(backend, array):
    return backend.asarray(array)


# --- norms -----------------------------------------------------------------------

@pytest.mark.parametrize("act,weight", [("float32", "float32"), ("float32", "float16"), ("float32", "bfloat16"),
                                        ("float16", "float16"), ("bfloat16", "bfloat16")])
@pytest.mark.parametrize("shape", [(2, 3, 70), (1, 1, 1000), (5, 33)])
def test_rms_norm(backend, act, weight, shape):
    x, w = store(randn(*shape), act), store(1 + 0.3 * randn(shape[-1], seed=1), weight)
    expected = norm.rms_norm(as_f32(x), as_f32(w), 1e-6)
    check(backend, backend.rms_norm(dev(backend, x), dev(backend, w), 1e-6), expected, act)


@pytest.mark.parametrize("act,weight", [("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16")])
def test_layer_norm_block_and_qk_norm(backend, act, weight):
    x, w = store(randn(2, 5, 96) + 3, act), store(1 + 0.3 * randn(96, seed=2), weight)
    check(backend, backend.layer_norm(dev(backend, x), dev(backend, w), 1e-5),
          norm.layer_norm(as_f32(x), as_f32(w), 1e-5), act)
    # qk-norm: per-head weights [H, HD] broadcast over [B, T, H, HD]
    q, wq = store(randn(2, 3, 5, 16), act), store(1 + 0.3 * randn(5, 16, seed=3), weight)
    check(backend, backend.layer_norm(dev(backend, q), dev(backend, wq), 1e-5),
          norm.layer_norm(as_f32(q), as_f32(wq), 1e-5), act)


# --- rope ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32"] + HALF)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("T", [1, 7])
def test_rope_both_layouts(backend, dtype, interleaved, T):
    x = store(randn(2, T, 3, 10), dtype)
    angles = np.arange(T, dtype=np.float32)[None, :, None] * np.float32([1.0, 0.5, 0.1, 0.03, 0.01])
    cos, sin = np.broadcast_to(np.cos(angles), (2, T, 5)).copy(), np.broadcast_to(np.sin(angles), (2, T, 5)).copy()
    expected = rope.apply_rope(as_f32(x), cos, sin, interleaved)
    got = backend.apply_rope(dev(backend, x), dev(backend, cos), dev(backend, sin), interleaved)
    check(backend, got, expected, dtype)


# --- attention -------------------------------------------------------------------

def padded_key_valid(B, S, pad):
    valid = np.ones((B, S), bool)
    valid[-1, :pad] = False   # the last row is left-padded
    return valid


ATTENTION_CASES = {
    # name: (T, S, H, KV, HD, window, pad)
    "prefill-causal-gqa": (9, 9, 6, 2, 16, None, 0),
    "prefill-padded-mqa": (8, 8, 4, 1, 16, None, 3),
    "prefill-window-edges": (11, 11, 4, 2, 16, 4, 2),
    "window-1": (6, 6, 2, 2, 8, 1, 0),
    "decode": (1, 13, 4, 2, 16, None, 2),
    "decode-window": (1, 13, 4, 2, 16, 4, 0),
    "chunk-after-cache": (3, 12, 4, 4, 16, None, 1),
    "several-key-tiles": (2, 300, 2, 1, 32, None, 5),
    "long-window-tiles": (2, 300, 2, 1, 32, 200, 0),
    "wide-head-dim": (3, 5, 2, 1, 160, None, 0),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_masks_and_layouts(backend, case):
    T, S, H, KV, HD, window, pad = ATTENTION_CASES[case]
    B = 2
    q, k, v = randn(B, T, H, HD), randn(B, S, KV, HD, seed=1), randn(B, S, KV, HD, seed=2)
    mask = ref_attention.attention_mask(np.arange(S - T, S), np.arange(S), padded_key_valid(B, S, pad), window)
    expected = ref_attention.attention(q, k, v, mask, HD ** -0.5)
    got = backend.attention(dev(backend, q), dev(backend, k), dev(backend, v), dev(backend, mask), HD ** -0.5)
    check(backend, got, expected)


def test_attention_ring_buffer_slots_and_empty_rows(backend):
    """Decode over a sliding ring: slots out of token order, an empty (-1) slot, a fully padded row."""
    W, B, H, KV, HD = 4, 2, 4, 2, 8
    slot_index = np.array([8, 5, 6, -1])          # token index held by each ring slot
    valid = np.ones((B, 9), bool)
    valid[1] = False                              # row 1: every key is padding -> zeros
    mask = ref_attention.attention_mask(np.array([8]), slot_index, valid[:, np.maximum(slot_index, 0)], W)
    q, k, v = randn(B, 1, H, HD), randn(B, W, KV, HD, seed=1), randn(B, W, KV, HD, seed=2)
    expected = ref_attention.attention(q, k, v, mask, 0.3)
    got = backend.attention(dev(backend, q), dev(backend, k), dev(backend, v), dev(backend, mask), 0.3)
    check(backend, got, expected)
    assert not backend.to_numpy(got)[1].any()


@pytest.mark.parametrize("dtype", HALF)
def test_attention_half_storage(backend, dtype):
    q, k, v = (store(randn(2, 5, 4, 16, seed=s), dtype) for s in range(3))
    mask = ref_attention.attention_mask(np.arange(5), np.arange(5), padded_key_valid(2, 5, 1), None)
    expected = ref_attention.attention(as_f32(q), as_f32(k), as_f32(v), mask, 0.25)
    got = backend.attention(*(dev(backend, a) for a in (q, k, v, mask)), 0.25)
    check(backend, got, expected, dtype)


# --- elementwise ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32"] + HALF)
@pytest.mark.parametrize("shape", [(1, 1, 37), (2, 5, 300)])
def test_swiglu(backend, dtype, shape):
    gate, up = store(2 * randn(*shape), dtype), store(randn(*shape, seed=1), dtype)
    check(backend, backend.swiglu(dev(backend, gate), dev(backend, up)), mlp.swiglu(as_f32(gate), as_f32(up)), dtype)


def test_swiglu_grid_stride_covers_more_than_the_grid(backend):
    gate, up = randn(5000), randn(5000, seed=1)
    out = backend._empty(gate.shape, np.float32)
    kernel = backend._module("swiglu").get_function("swiglu<float>")
    kernel((3,), (64,), (dev(backend, gate), dev(backend, up), out, np.int64(gate.size)))  # 192 threads, 5000 items
    check(backend, out, mlp.swiglu(gate, up))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scale_logits(backend, dtype):
    logits = store(5 * randn(2, 3, 257), dtype)
    check(backend, backend.scale_logits(dev(backend, logits), 0.0625),
          ref_linear.scale_logits(as_f32(logits), 0.0625), dtype)


# --- linear and embedding ---------------------------------------------------------

@pytest.mark.parametrize("act,weight", [("float32", "float32"), ("float32", "float16"), ("float32", "bfloat16"),
                                        ("float16", "float16"), ("bfloat16", "bfloat16")])
@pytest.mark.parametrize("rows", [1, 5, 13, 40])   # gemv (<= 8 rows) and tiled
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(backend, act, weight, rows, with_bias):
    x = store(randn(rows, 70), act)
    w = backend.prepare_weight(quantize(0.2 * randn(97, 70, seed=1), weight))
    bias = randn(97, seed=2) if with_bias else None
    expected = ref_linear.linear(as_f32(x), quantize(as_f32(backend.to_numpy(w.data)), "float32"), bias)
    got = backend.linear(dev(backend, x), w, None if bias is None else dev(backend, bias))
    check(backend, got, expected, act)


def test_linear_keeps_leading_axes(backend):
    x, w = randn(2, 7, 33), randn(10, 33, seed=1)
    got = backend.linear(dev(backend, x), backend.prepare_weight(quantize(w, "float32")), None)
    check(backend, got, ref_linear.linear(x, quantize(w, "float32")))


@pytest.mark.parametrize("dtype", ["float32"] + HALF)
def test_embedding(backend, dtype):
    table = backend.prepare_weight(quantize(randn(31, 70), dtype))
    ids = np.array([[0, 5, 30], [7, 7, 1]])
    expected = ref_linear.embedding(ids, quantize(as_f32(backend.to_numpy(table.data)), "float32"))
    check(backend, backend.embedding(dev(backend, ids), table), expected)


def test_embedding_out_of_range_id_asserts(backend):
    if backend.name != "cuda-emulated":
        pytest.skip("a device assert poisons the CUDA context; shown on the harness only")
    with pytest.raises(DeviceAssertError, match="id >= 0 && id < vocab"):
        backend.embedding(np.array([[1, 31]]), backend.prepare_weight(quantize(randn(31, 8), "float32")))


# --- choosing tokens --------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32"] + HALF)
def test_argmax_first_index_on_ties(backend, dtype):
    scores = randn(4, 1001)
    scores[1, [10, 500, 900]] = 100.0         # ties: the first index wins
    scores[2, :] = -np.inf
    scores[2, [3, 4]] = 0.0
    scores[3, 17], scores[3, 600] = np.nan, np.nan  # NaN counts as the largest, like numpy
    scores = store(scores, dtype)
    expected = sampling.argmax(as_f32(scores))
    got = backend.to_numpy(backend.argmax(dev(backend, scores)))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_argmax_small_vocab(backend):
    scores = randn(3, 5)
    np.testing.assert_array_equal(backend.to_numpy(backend.argmax(dev(backend, scores))), sampling.argmax(scores))


@pytest.mark.parametrize("vocab", [7, 1000])
def test_sample_matches_inverse_cdf_reference(backend, vocab):
    scores = 2 * randn(6, vocab)
    scores = sampling.top_k_filter(scores, max(2, vocab // 3))  # filtered tokens arrive as -inf
    got = backend.to_numpy(backend.sample(dev(backend, scores), np.random.default_rng(5)))
    expected = sampling.sample(scores, np.random.default_rng(5))
    np.testing.assert_array_equal(got, expected)
    assert np.isfinite(scores[np.arange(6), got]).all()


# --- glue -------------------------------------------------------------------------

def test_bfloat16_weights_reach_the_device_unchanged(backend):
    w = quantize(randn(33, 64), "bfloat16")
    np.testing.assert_array_equal(backend.to_numpy(backend.prepare_weight(w).data), w.data)


def test_unsupported_dtype_combination_is_a_clear_error(backend):
    x, w = store(randn(2, 8), "bfloat16"), randn(8)
    with pytest.raises(TypeError, match="no rms_norm<__nv_bfloat16, float>"):
        backend.rms_norm(dev(backend, x), dev(backend, w), 1e-6)


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_fails_with_a_clear_message():
    with pytest.raises(NoGpuError, match="no GPU found.*backend='cuda-emulated'"):
        make_cuda_backend(emulated=False)
    import minilm.backends
    with pytest.raises(NoGpuError):
        minilm.backends.get_backend("cuda")
