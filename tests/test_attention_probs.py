"""The attention_probs op on every backend: the softmax weights [B, H, T, S] that `attention`
multiplies the values by, against the NumPy reference on the mask layouts the model produces
(causal, padded, sliding windows, decode over a ring buffer, several CUDA key tiles).

tests/test_backends.py checks the op once per backend; these are its edge cases.
"""
import numpy as np
import pytest

from minilm.backends import get_backend
from minilm.cuda import gpu_available
from minilm.ops import attention as ref
from test_cuda_ops import ATTENTION_CASES, HALF, as_f32, padded_key_valid, randn, store

BACKENDS = ["numpy", "numba", "cuda-emulated"] + (["cuda"] if gpu_available() else [])


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return get_backend(request.param)


def probs(backend, q, k, mask, scale):
    got = backend.attention_probs(backend.asarray(q), backend.asarray(k), backend.asarray(mask), scale)
    return np.asarray(backend.to_numpy(got))


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_probs_masks_and_layouts(backend, case):
    T, S, H, KV, HD, window, pad = ATTENTION_CASES[case]
    q, k = randn(2, T, H, HD), randn(2, S, KV, HD, seed=1)
    mask = ref.attention_mask(np.arange(S - T, S), np.arange(S), padded_key_valid(2, S, pad), window)
    got = probs(backend, q, k, mask, HD ** -0.5)
    assert got.shape == (2, H, T, S) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.attention_probs(q, k, mask, HD ** -0.5), rtol=1e-5, atol=1e-6)
    assert not got[np.broadcast_to(~mask[:, None], got.shape)].any()       # masked keys get exactly 0
    rows = mask.any(-1)                                                      # [B, T] rows with a visible key
    np.testing.assert_allclose(got.sum(-1).transpose(0, 2, 1)[rows], 1.0, rtol=1e-5)


def test_probs_times_values_is_the_attention_output(backend):
    """The two ops agree with each other: attention = attention_probs @ v, head h reading kv head h // 2."""
    q, k, v = randn(2, 6, 4, 16), randn(2, 6, 2, 16, seed=1), randn(2, 6, 2, 16, seed=2)
    mask = ref.attention_mask(np.arange(6), np.arange(6), padded_key_valid(2, 6, 2), 3)
    weights = probs(backend, q, k, mask, 0.25)                              # [B, H, T, S]
    context = np.einsum("bhts,bshd->bthd", weights, np.repeat(v, 2, axis=2))
    out = backend.attention(*(backend.asarray(a) for a in (q, k, v, mask)), 0.25)
    np.testing.assert_allclose(context, backend.to_numpy(out), rtol=1e-5, atol=1e-5)


def test_ring_buffer_slots_and_a_fully_padded_row(backend):
    """Decode over a sliding ring: slots out of token order, an empty (-1) slot; a row of padding is all zeros."""
    W, H, KV, HD = 4, 4, 2, 8
    slot_index = np.array([8, 5, 6, -1])            # token index held by each ring slot
    valid = np.ones((2, 9), bool)
    valid[1] = False
    mask = ref.attention_mask(np.array([8]), slot_index, valid[:, np.maximum(slot_index, 0)], W)
    q, k = randn(2, 1, H, HD), randn(2, W, KV, HD, seed=1)
    got = probs(backend, q, k, mask, 0.3)
    np.testing.assert_allclose(got, ref.attention_probs(q, k, mask, 0.3), rtol=1e-5, atol=1e-6)
    assert not got[1].any()                          # no visible key: zeros, not NaN, not uniform
    assert not got[0, :, :, 3].any() and got[0, :, :, :3].all()   # the empty slot gets nothing


@pytest.mark.parametrize("dtype", HALF)
def test_half_storage_on_cuda(dtype):
    for name in ["cuda-emulated"] + (["cuda"] if gpu_available() else []):
        backend = get_backend(name)
        q, k = store(randn(2, 5, 4, 16), dtype), store(randn(2, 5, 2, 16, seed=1), dtype)
        mask = ref.attention_mask(np.arange(5), np.arange(5), padded_key_valid(2, 5, 1), None)
        got = probs(backend, q, k, mask, 0.25)
        assert got.dtype == np.float32                # the weights are float32 whatever q and k are stored in
        np.testing.assert_allclose(got, ref.attention_probs(as_f32(q), as_f32(k), mask, 0.25), atol=2e-3)


def test_negative_control_unscaled_scores_fail():
    q, k = randn(1, 5, 2, 16), randn(1, 5, 2, 16, seed=1)
    mask = ref.attention_mask(np.arange(5), np.arange(5), np.ones((1, 5), bool))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(ref.attention_probs(q, k, mask, 1.0), ref.attention_probs(q, k, mask, 0.25),
                                   rtol=1e-5, atol=1e-6)
