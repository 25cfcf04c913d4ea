"""NaN never becomes an answer (issue 23).

Attention propagates a NaN score row as transformers' softmax does (expectations from
transformers' own `eager_attention_forward`), on every backend; NaN/Inf in stored scales is
refused at load naming the tensor; NaN in a memory-mapped float matrix is named at the first
forward whose logits it reaches.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from minilm.ops import attention as ref_attention
from minilm.ops import numba_attention
from tests.hostile_helpers import time_limit  # noqa: F401  (autouse fixture)


def _emulated_attention():
    pytest.importorskip("cupy")
    from minilm.cuda.backend import CudaBackend
    backend = CudaBackend(emulated=True)

    def attention(q, k, v, mask, scale):
        args = (backend.asarray(a) for a in (q, k, v, mask))
        return backend.to_numpy(backend.attention(*args, scale))

    def probs(q, k, mask, scale):
        return backend.to_numpy(backend.attention_probs(*(backend.asarray(a) for a in (q, k, mask)), scale))
    return attention, probs


def _backend_ops(name):
    if name == "numpy":
        return ref_attention.attention, ref_attention.attention_probs
    if name == "numba":
        return numba_attention.attention, numba_attention.attention_probs
    return _emulated_attention()


def transformers_attention(q, k, v, mask, scale):
    """transformers' eager attention (finfo.min additive mask) on minilm's layouts."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    class Module(torch.nn.Module):
        num_key_value_groups = q.shape[2] // k.shape[2]
    additive = torch.where(torch.from_numpy(mask)[:, None], 0.0, torch.finfo(torch.float32).min)
    out, weights = eager_attention_forward(Module().eval(), *(torch.from_numpy(a).transpose(1, 2) for a in (q, k, v)),
                                           additive, scale)
    return out.numpy(), weights.numpy()


def nan_inputs():
    """B=2, T=S=6, H=4, KV=2: a NaN in one query (one row NaN), a NaN in the first key of batch 1's
    kv head 1 (every row of heads 2-3 in batch 1 sees it), batch 0 left-padded by one (row 0 sees nothing)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 6, h, 8)).astype(np.float32) for h in (4, 2, 2))
    q[0, 3, 1, 5] = np.nan
    k[1, 0, 1, 2] = np.nan
    valid = np.ones((2, 6), bool)
    valid[0, 0] = False
    mask = ref_attention.attention_mask(np.arange(6), np.arange(6), valid)
    return q, k, v, mask


def assert_same_with_nan(got, expected):
    """Same NaN positions, and the finite values within 1e-4."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.abs(got[finite] - expected[finite]).max() < 1e-4


@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda-emulated"])
def test_attention_propagates_nan_like_transformers(backend):
    attention, probs = _backend_ops(backend)
    q, k, v, mask = nan_inputs()
    expected_out, expected_probs = transformers_attention(q, k, v, mask, 0.35)
    seen = mask.any(-1)                                                # [B, T] rows with a visible key
    assert np.isnan(expected_out[seen]).any() and not np.isnan(expected_out[seen]).all()   # both kinds of row
    got_out, got_probs = attention(q, k, v, mask, 0.35), probs(q, k, mask, 0.35)
    assert_same_with_nan(np.asarray(got_out)[seen], expected_out[seen])
    assert_same_with_nan(np.asarray(got_probs).transpose(0, 2, 1, 3)[seen],
                         expected_probs.transpose(0, 2, 1, 3)[seen])
    # A row that sees no key keeps sdpa's zeros (eager averages every value there: docs/semantics.md 6.2).
    assert not np.asarray(got_out)[0, 0].any() and not np.asarray(got_probs)[0, :, 0].any()


def test_nan_comparison_can_fail():
    """Negative control: the old behaviour (a NaN row turned into zeros) fails the comparison."""
    q, k, v, mask = nan_inputs()
    expected_out, _ = transformers_attention(q, k, v, mask, 0.35)
    zeroed = np.nan_to_num(expected_out, nan=0.0)
    with pytest.raises(AssertionError):
        assert_same_with_nan(zeroed, expected_out)
