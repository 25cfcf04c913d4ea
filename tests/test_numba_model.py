"""Whole models on the Numba backend equal the NumPy reference (which test_parity.py ties to transformers).

Logits within 1e-4 on a left-padded batch and through cached decoding, greedy
generations identical, for all three families; bf16 weight storage equals the
reference run on the bf16-rounded weights.
"""
import numpy as np
import pytest

import numba  # noqa: F401

import minilm  # noqa: E402
from conftest import assert_logits_close, incremental_logits, left_padded_batch, random_ids  # noqa: E402

FAMILIES = {
    "llama": dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=96),    # GQA, head_dim 16
    "llama-mqa-bias": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True),
    "cohere": dict(use_qk_norm=True),
    "cohere2": dict(sliding_window=4),
}


def load_pair(tiny_model, name, **load_options):
    family = name.split("-")[0]
    _, folder = tiny_model(family, **FAMILIES[name])
    reference = minilm.load(folder, backend="numpy", progress=False, **load_options)
    fast = minilm.load(folder, backend="numba", progress=False, **load_options)
    assert fast.backend.name == "numba"
    return reference, fast





@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_forward_and_cached_decoding(tiny_model, name):
    reference, fast = load_pair(tiny_model, name)
    ids, mask = left_padded_batch(length=14)
    keep = mask.astype(bool)
    assert_logits_close(fast(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits, keep)
    # Prefill 5, then decode across the cohere2 window (W - 1, W, W + 1, 2W, ...).
    assert_logits_close(incremental_logits(fast, ids, mask, 5), incremental_logits(reference, ids, mask, 5), keep)


@pytest.mark.parametrize("name", ["llama", "cohere", "cohere2"])
def test_greedy_generation_equal(tiny_model, name):
    reference, fast = load_pair(tiny_model, name)
    ids = random_ids(1, 7, seed=3)
    expected = reference.generate(ids, max_new_tokens=20, eos_token_id=[])
    np.testing.assert_array_equal(fast.generate(ids, max_new_tokens=20, eos_token_id=[]), expected)


@pytest.mark.parametrize("name", ["llama", "cohere2"])
def test_bf16_weights_equal_reference_on_rounded_weights(tiny_model, name):
    # The reference decodes the same bf16 weights the kernels widen in registers.
    reference, fast = load_pair(tiny_model, name, weight_dtype="bfloat16")
    assert fast.weights["model.layers.0.mlp.up_proj.weight"].data.dtype == np.uint16, "bf16 storage was not used"
    ids, mask = left_padded_batch(length=11)
    keep = mask.astype(bool)
    assert_logits_close(fast(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits, keep)
    assert_logits_close(incremental_logits(fast, ids, mask, 4), incremental_logits(reference, ids, mask, 4), keep)


@pytest.mark.parametrize("name", ["llama", "cohere2"])
def test_bf16_checkpoint_same_logits_with_float32_or_bf16_storage(tiny_model, name):
    # A checkpoint saved in bf16 (as most Hub models are): bf16 storage keeps its weights exactly,
    # so the bf16 path may differ from the float32 path only by the order of float32 sums.
    import torch
    family = name.split("-")[0]
    _, folder = tiny_model(family, dtype=torch.bfloat16, **FAMILIES[name])
    float32_path = minilm.load(folder, backend="numba", weight_dtype="float32", progress=False)
    bf16_path = minilm.load(folder, backend="numba", weight_dtype="bfloat16", progress=False)
    assert bf16_path.weights["model.layers.0.mlp.up_proj.weight"].format == "bfloat16"
    ids, mask = left_padded_batch(length=11)
    keep = mask.astype(bool)
    assert_logits_close(bf16_path(ids, attention_mask=mask).logits, float32_path(ids, attention_mask=mask).logits,
                        keep)
    assert_logits_close(incremental_logits(bf16_path, ids, mask, 4), incremental_logits(float32_path, ids, mask, 4),
                        keep)
    # Negative control: a float32 checkpoint stored in bf16 loses weight bits, and the check sees it.
    _, folder32 = tiny_model(family, **FAMILIES[name])
    rounded = minilm.load(folder32, backend="numba", weight_dtype="bfloat16", progress=False)
    exact = minilm.load(folder32, backend="numba", weight_dtype="float32", progress=False)
    with pytest.raises(AssertionError, match="logits differ"):
        assert_logits_close(rounded(ids, attention_mask=mask).logits, exact(ids, attention_mask=mask).logits, keep)

