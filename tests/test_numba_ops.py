"""Every Numba kernel equals its NumPy reference on random inputs.

Odd sizes, T = 1 (decode) and T > 1 (prefill), sliding-window edges, padded
and fully masked rows, MHA / GQA / MQA, and bf16 weight storage (checked
against the NumPy op on the bf16-rounded float32 weights). Speed is never
asserted here; see `minilm bench`.
"""
import numpy as np
import pytest

import numba  # noqa: F401

from minilm.backends import get_backend  # noqa: E402
from minilm.formats import quantize  # noqa: E402
from minilm.ops import numba_linear, numba_sampling, sampling  # noqa: E402
from minilm.ops.attention import attention_mask  # noqa: E402

REF, NB = get_backend("numpy"), get_backend("numba")
TOL = dict(rtol=1e-5, atol=1e-5)


def randn(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 1, 577), (2, 7, 65), (3, 33)])
def test_rms_norm(shape):
    rng = np.random.default_rng(0)
    x, w = randn(rng, *shape, scale=3.0), randn(rng, shape[-1])
    np.testing.assert_allclose(NB.rms_norm(x, w, 1e-6), REF.rms_norm(x, w, 1e-6), **TOL)


@pytest.mark.parametrize("shape,weight_shape", [((1, 1, 577), (577,)), ((2, 7, 65), (65,)),
                                                ((2, 5, 3, 17), (3, 17)),   # qk-norm: one weight row per head
                                                ((1, 1, 7, 32), (7, 32))])
def test_layer_norm(shape, weight_shape):
    rng = np.random.default_rng(1)
    x, w = randn(rng, *shape, scale=3.0) + 1.5, randn(rng, *weight_shape)
    np.testing.assert_allclose(NB.layer_norm(x, w, 1e-5), REF.layer_norm(x, w, 1e-5), **TOL)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("B,T,H,HD", [(1, 1, 3, 8), (2, 9, 5, 34), (1, 4, 1, 2)])
def test_apply_rope(interleaved, B, T, H, HD):
    rng = np.random.default_rng(2)
    x = randn(rng, B, T, H, HD)
    angles = rng.uniform(0, 50, (B, T, HD // 2)).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    np.testing.assert_allclose(NB.apply_rope(x, cos, sin, interleaved),
                               REF.apply_rope(x, cos, sin, interleaved), **TOL)


def check_attention(rng, B, T, H, KV, HD, mask, k=None, v=None):
    S = mask.shape[-1]
    q = randn(rng, B, T, H, HD)
    k = randn(rng, B, S, KV, HD) if k is None else k
    v = randn(rng, B, S, KV, HD) if v is None else v
    got = NB.attention(q, k, v, mask, HD ** -0.5)
    np.testing.assert_allclose(got, REF.attention(q, k, v, mask, HD ** -0.5), **TOL)
    return got


@pytest.mark.parametrize("H,KV", [(4, 4), (6, 2), (5, 1)])               # MHA, GQA, MQA
@pytest.mark.parametrize("T,past,window", [(1, 0, None), (1, 12, None), (13, 0, None), (6, 7, None),
                                           (1, 12, 4), (13, 0, 1), (13, 0, 4), (13, 0, 13), (5, 9, 3)])
def test_attention_causal_window_and_padding(H, KV, T, past, window):
    rng = np.random.default_rng(3)
    B, HD, S = 2, 17, past + T
    key_valid = np.ones((B, S), bool)
    key_valid[1, :3] = False                                                 # row 1 left-padded by 3
    mask = attention_mask(np.arange(past, S), np.arange(S), key_valid, window)
    out = check_attention(rng, B, T, H, KV, HD, mask)
    if past == 0 and T > 1:                                                  # pad queries see nothing
        assert not mask[1, 0].any() and np.all(out[1, 0] == 0)


def test_attention_fully_masked_rows_and_random_masks():
    rng = np.random.default_rng(4)
    mask = rng.random((3, 4, 11)) < 0.4
    mask[0, 1] = False
    mask[2] = False                                                          # a whole padded row
    out = check_attention(rng, 3, 4, 6, 3, 8, mask)
    assert np.all(out[0, 1] == 0) and np.all(out[2] == 0)


def test_attention_on_cache_views():
    """k / v as slices of a larger cache buffer (not contiguous when B > 1)."""
    rng = np.random.default_rng(5)
    cache = randn(rng, 2, 32, 2, 16)
    k, v = cache[:, :10], cache[:, 5:15]
    assert not k.flags.c_contiguous
    mask = attention_mask(np.array([9]), np.arange(10), np.ones((2, 10), bool))
    check_attention(rng, 2, 1, 4, 2, 16, mask, k, v)


@pytest.mark.parametrize("shape", [(1, 1, 1537), (2, 5, 129), (7,)])
def test_swiglu(shape):
    rng = np.random.default_rng(6)
    gate, up = randn(rng, *shape, scale=4.0), randn(rng, *shape)
    np.testing.assert_allclose(NB.swiglu(gate, up), REF.swiglu(gate, up), **TOL)


LINEAR_ROWS = [(1, 1), (1, 3), (1, numba_linear.GEMV_MAX_ROWS), (2, 5), (3, 13), (1, 16)]  # GEMV, tiled matmul


@pytest.mark.parametrize("B,T", LINEAR_ROWS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_equals_reference(B, T, with_bias, dtype):
    # Both backends read the same stored (for bf16: rounded) weights: this checks the kernel, not the rounding.
    rng = np.random.default_rng(7)
    x, w = randn(rng, B, T, 67), randn(rng, 45, 67, scale=0.3)
    bias = randn(rng, 45) if with_bias else None
    stored = NB.prepare_weight(quantize(w, dtype))
    assert stored.data.dtype == (np.uint16 if dtype == "bfloat16" else np.float32)
    np.testing.assert_allclose(NB.linear(x, stored, bias), REF.linear(x, stored, bias), **TOL)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embedding(dtype):
    rng = np.random.default_rng(10)
    stored = NB.prepare_weight(quantize(randn(rng, 31, 19), dtype))
    for ids in (rng.integers(0, 31, (1, 1)), rng.integers(0, 31, (3, 7))):
        np.testing.assert_array_equal(NB.embedding(ids, stored), REF.embedding(ids, stored))


@pytest.mark.parametrize("shape", [(1, 1, 257), (2, 3, 31)])
def test_scale_logits(shape):
    x = randn(np.random.default_rng(11), *shape, scale=5.0)
    np.testing.assert_array_equal(NB.scale_logits(x, 0.0625), REF.scale_logits(x, 0.0625))


def test_argmax_first_index_on_ties_and_nan():
    rng = np.random.default_rng(12)
    scores = randn(rng, 4, 1001)
    scores[1, [3, 500]] = 100.0                     # tie: first index wins
    scores[2, :] = -np.inf
    scores[3, [7, 9]] = np.nan                      # first NaN, like np.argmax
    np.testing.assert_array_equal(NB.argmax(scores), REF.argmax(scores))
    assert NB.argmax(scores).dtype == np.int64


@pytest.mark.parametrize("k", [1, 5, 50, 1000])
def test_top_k_filter(k):
    rng = np.random.default_rng(13)
    scores = randn(rng, 3, 257, scale=3.0)
    scores[0, :20] = 2.5                             # ties with the k-th value are kept
    np.testing.assert_array_equal(numba_sampling.top_k_filter(scores, k), sampling.top_k_filter(scores, k))


@pytest.mark.parametrize("p,min_keep", [(0.9, 1), (0.5, 1), (0.01, 1), (0.01, 3), (1.0, 1)])
def test_top_p_filter(p, min_keep):
    rng = np.random.default_rng(14)
    scores = randn(rng, 3, 257, scale=3.0)
    scores[1, :10] = -np.inf                          # already filtered by top-k
    np.testing.assert_array_equal(numba_sampling.top_p_filter(scores, p, min_keep),
                                  sampling.top_p_filter(scores, p, min_keep))


def test_vectorised_exp_is_accurate():
    from numba import njit
    from minilm.ops.numba_math import exp_f32

    @njit
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = exp_f32(x[i])

    x = np.concatenate([np.random.default_rng(15).uniform(-87, 88, 100_000),
                        [0.0, -1e-8, 1e-8, -88.5, -100.0, -np.inf, 89.0]]).astype(np.float32)
    got = np.empty_like(x)
    exp_all(x, got)
    expected = np.exp(x.astype(np.float64))
    normal = (x > -87) & (x < 87.9)
    assert np.max(np.abs(got[normal] - expected[normal]) / expected[normal]) < 5e-7
    assert np.all(got[x <= -88.5] == 0) and np.isfinite(got).all()
