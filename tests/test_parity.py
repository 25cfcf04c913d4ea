"""Parity of the NumPy reference against transformers on tiny random models.

Every expected value is computed by transformers from the same safetensors
checkpoint; minilm never provides its own expectations. Tolerance 1e-4 max abs
on logits and every hidden state, non-pad positions only.
"""
import numpy as np
import pytest
import torch

import minilm
from conftest import hf_forward, left_padded_batch, random_ids

TOL = 1e-4
YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 32}
LONGROPE_SHORT = [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8]
LONGROPE_LONG = [1.2, 1.5, 2.0, 2.8, 3.5, 4.4, 5.5, 7.0]
ROPE_VARIANTS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "yarn": YARN,
    "yarn-mscale": {**YARN, "mscale": 0.707, "mscale_all_dim": 1.0},
    "yarn-attention-factor": {**YARN, "attention_factor": 0.8},
    "yarn-untruncated-betas": {**YARN, "truncate": False, "beta_fast": 16, "beta_slow": 2},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "longrope-short": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": LONGROPE_SHORT,
                       "long_factor": LONGROPE_LONG, "original_max_position_embeddings": 32},
    "longrope-long": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": LONGROPE_SHORT,
                      "long_factor": LONGROPE_LONG, "original_max_position_embeddings": 8},
}


def assert_parity(hf_model, folder, ids, attention_mask=None, tol=TOL, **load_kwargs):
    """minilm's logits and hidden states equal transformers' on every non-pad position."""
    expected_logits, expected_hidden = hf_forward(hf_model, ids, attention_mask)
    model = minilm.load(folder, progress=False, backend="numpy", **load_kwargs)
    out = model(ids, attention_mask=attention_mask, output_hidden_states=True)
    keep = np.ones(ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
    assert out.logits.shape == expected_logits.shape
    assert len(out.hidden_states) == len(expected_hidden)
    logit_err = np.abs(out.logits - expected_logits)[keep].max()
    hidden_err = max(np.abs(a - b)[keep].max() for a, b in zip(out.hidden_states, expected_hidden))
    assert logit_err < tol, f"logits differ by {logit_err:.3g}"
    assert hidden_err < tol, f"hidden states differ by {hidden_err:.3g}"
    return logit_err



@pytest.mark.parametrize("family", ["llama", "cohere", "cohere2"])
def test_family_parity_left_padded_batch(tiny_model, family):
    hf, folder = tiny_model(family)
    ids, mask = left_padded_batch()
    assert_parity(hf, folder, ids, mask)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("family", ["llama", "cohere"])
def test_attention_head_layouts(tiny_model, family, kv_heads):
    hf, folder = tiny_model(family, num_key_value_heads=kv_heads)
    assert_parity(hf, folder, random_ids(1, 12))


def test_cohere_qk_norm(tiny_model):
    hf, folder = tiny_model("cohere", use_qk_norm=True)
    ids, mask = left_padded_batch()
    assert_parity(hf, folder, ids, mask)


@pytest.mark.parametrize("family,overrides", [
    ("llama", {"attention_bias": True, "mlp_bias": True}),
    ("llama", {"tie_word_embeddings": True}),
    ("cohere", {"attention_bias": True}),
    ("cohere2", {"attention_bias": True}),
])
def test_biases_and_tying(tiny_model, family, overrides):
    hf, folder = tiny_model(family, **overrides)
    assert_parity(hf, folder, random_ids(2, 10))


@pytest.mark.parametrize("family", ["llama", "cohere", "cohere2"])
def test_explicit_head_dim(tiny_model, family):
    hf, folder = tiny_model(family, head_dim=32)
    assert_parity(hf, folder, random_ids(1, 12))


@pytest.mark.parametrize("variant", list(ROPE_VARIANTS))
@pytest.mark.parametrize("family", ["llama", "cohere"])
def test_rope_types(tiny_model, family, variant):
    hf, folder = tiny_model(family, rope_parameters=ROPE_VARIANTS[variant])
    assert_parity(hf, folder, random_ids(2, 20))


def test_dynamic_rope_beyond_max_positions(tiny_model):
    # T=40 > max_position_embeddings=16: the NTK base grows for this call.
    hf, folder = tiny_model("llama", max_position_embeddings=16, rope_parameters=ROPE_VARIANTS["dynamic"])
    ids = random_ids(1, 40)
    model = minilm.load(folder, progress=False, backend="numpy")
    expected, _ = hf_forward(hf, ids)
    assert np.abs(model(ids).logits - expected).max() < TOL


def test_legacy_rope_keys(tiny_model, tmp_path):
    # A 4.x-style config.json (top-level rope_theta + rope_scaling) loads like the 5.x dict.
    import json
    hf, folder = tiny_model("llama", rope_parameters=ROPE_VARIANTS["linear"])
    path = f"{folder}/config.json"
    cfg = json.load(open(path))
    cfg.pop("rope_parameters")
    cfg["rope_theta"], cfg["rope_scaling"] = 10000.0, {"type": "linear", "factor": 2.0}
    json.dump(cfg, open(path, "w"))
    assert_parity(hf, folder, random_ids(1, 12))


@pytest.mark.parametrize("family", ["llama", "cohere", "cohere2"])
def test_bf16_checkpoint(tiny_model, family):
    # Saved as bf16; transformers runs the bf16-rounded weights in float32, minilm widens bf16 without torch.
    hf, folder = tiny_model(family, dtype=torch.bfloat16)
    assert_parity(hf, folder, random_ids(1, 12))


def test_fp16_and_sharded_checkpoint(tiny_model, tmp_path):
    hf, folder = tiny_model("llama", dtype=torch.float16)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert_parity(hf, str(tmp_path / "sharded"), random_ids(1, 12))


def hf_incremental(hf, ids, mask, steps):
    """transformers' own cached decoding: prefill ids, then feed `steps` tokens one at a time."""
    from transformers import DynamicCache
    cache = DynamicCache(config=hf.config)
    logits = []
    with torch.no_grad():
        out = hf(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), past_key_values=cache, use_cache=True)
        logits.append(out.logits.numpy())
        for t in range(steps.shape[1]):
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), mask.dtype)], axis=1)
            out = hf(torch.as_tensor(steps[:, t:t + 1]), attention_mask=torch.as_tensor(mask),
                     past_key_values=cache, use_cache=True)
            logits.append(out.logits.numpy())
    return logits, cache


def minilm_incremental(model, ids, mask, steps):
    cache = model.new_cache(ids.shape[0])
    logits = [model(ids, attention_mask=mask, cache=cache).logits]
    for t in range(steps.shape[1]):
        logits.append(model(steps[:, t:t + 1], cache=cache).logits)
    return logits, cache


@pytest.mark.parametrize("family", ["llama", "cohere", "cohere2"])
def test_cached_decoding_equals_full_forward(tiny_model, family):
    hf, folder = tiny_model(family)
    ids, mask = left_padded_batch(length=24)
    model = minilm.load(folder, progress=False, backend="numpy")
    prefix = 10
    step_logits, _ = minilm_incremental(model, ids[:, :prefix], mask[:, :prefix], ids[:, prefix:])
    full, _ = hf_forward(hf, ids, mask)
    got = np.concatenate(step_logits, axis=1)
    assert np.abs(got - full)[mask.astype(bool)].max() < TOL


@pytest.mark.parametrize("rope", ["dynamic", "longrope-short"])
def test_cached_decoding_with_per_call_rope_state(tiny_model, rope):
    # dynamic (sticky) and longrope recompute frequencies per call: compare with transformers' own cache.
    params = dict(ROPE_VARIANTS[rope], original_max_position_embeddings=8) if rope != "dynamic" \
        else ROPE_VARIANTS[rope]
    hf, folder = tiny_model("llama", max_position_embeddings=16, rope_parameters=params)
    model = minilm.load(folder, progress=False, backend="numpy")
    ids = random_ids(1, 24)
    mask = np.ones((1, 6), dtype=np.int64)
    expected, _ = hf_incremental(hf, ids[:, :6], mask, ids[:, 6:])
    got, _ = minilm_incremental(model, ids[:, :6], mask, ids[:, 6:])
    for step, (a, b) in enumerate(zip(got, expected)):
        assert np.abs(a - b).max() < TOL, f"step {step}"


@pytest.mark.parametrize("window", [4, 1, 5])
def test_cohere2_window_prefill_and_decode_across_boundary(tiny_model, window):
    """Prefill longer than W, then decode through positions W-1, W, W+1 ... 2W and beyond."""
    hf, folder = tiny_model("cohere2", sliding_window=window)
    model = minilm.load(folder, progress=False, backend="numpy")
    ids = random_ids(2, 3 * window + 8, seed=1)
    mask = np.ones_like(ids)
    full, _ = hf_forward(hf, ids, mask)
    for prefix in sorted({1, max(window - 1, 1), window + 2}):
        got, cache = minilm_incremental(model, ids[:, :prefix], mask[:, :prefix], ids[:, prefix:])
        got = np.concatenate(got, axis=1)
        assert np.abs(got - full).max() < TOL, f"prefix {prefix}"
        # Sliding layers hold at most W tokens (a ring buffer); the global layer holds all.
        lengths = cache.stored_lengths()
        for i, n in enumerate(lengths):
            expected = min(window, ids.shape[1]) if model.config.layer_types[i] == "sliding_attention" \
                else ids.shape[1]
            assert n == expected


def test_cohere2_cached_matches_transformers_cache(tiny_model):
    hf, folder = tiny_model("cohere2")
    ids, mask = left_padded_batch(length=20)
    model = minilm.load(folder, progress=False, backend="numpy")
    expected, _ = hf_incremental(hf, ids[:, :9], mask[:, :9], ids[:, 9:])
    got, _ = minilm_incremental(model, ids[:, :9], mask[:, :9], ids[:, 9:])
    prefill_keep = mask[:, :9].astype(bool)
    assert np.abs(got[0] - expected[0])[prefill_keep].max() < TOL
    for a, b in zip(got[1:], expected[1:]):
        assert np.abs(a - b).max() < TOL


def test_cohere2_layer_types_from_pattern(tiny_model):
    # layer_types omitted: built from sliding_window_pattern (default 4) -> [S, S, S, F, S, S]
    hf, folder = tiny_model("cohere2", layer_types=None, num_hidden_layers=6)
    model = minilm.load(folder, progress=False, backend="numpy")
    assert model.config.layer_types == tuple(hf.config.layer_types)
    assert_parity(hf, folder, random_ids(1, 14))


def test_sequence_classification(tiny_model):
    hf, folder = tiny_model("llama", classifier=True, num_labels=3)
    ids = random_ids(2, 12)
    ids[0, -3:] = 0  # right padding on row 0: pooled at the rightmost non-pad token
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        out = hf(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), labels=torch.tensor([0, 2]))
    model = minilm.load(folder, progress=False, backend="numpy")
    got = model(ids, attention_mask=mask, labels=np.array([0, 2]))
    assert got.logits.shape == (2, 3)
    assert np.abs(got.logits - out.logits.numpy()).max() < TOL
    assert abs(got.loss - out.loss.item()) < TOL


@pytest.mark.parametrize("family", ["llama", "cohere", "cohere2"])
def test_causal_lm_loss(tiny_model, family):
    hf, folder = tiny_model(family)
    ids = random_ids(2, 12)
    labels = ids.copy()
    labels[0, :4] = -100
    with torch.no_grad():
        expected = hf(torch.as_tensor(ids), labels=torch.as_tensor(labels)).loss.item()
    got = minilm.load(folder, progress=False, backend="numpy")(ids, labels=labels).loss
    assert abs(got - expected) < TOL


# --- negative controls: a deliberately wrong model must fail the same comparison ---

def test_negative_control_window_off_by_one(tiny_model):
    hf, folder = tiny_model("cohere2")
    model = minilm.load(folder, progress=False, backend="numpy")
    model.config.__dict__["sliding_window"] = 5  # W+1
    ids = random_ids(1, 16)
    expected, _ = hf_forward(hf, ids)
    assert np.abs(model(ids).logits - expected).max() > 1e-2


def test_negative_control_llama_rope_pairing_on_cohere(tiny_model):
    hf, folder = tiny_model("cohere")
    model = minilm.load(folder, progress=False, backend="numpy")
    reference = model.backend.apply_rope
    model.backend.apply_rope = lambda x, cos, sin, interleaved: reference(x, cos, sin, False)  # half-split
    ids = random_ids(1, 16)
    expected, _ = hf_forward(hf, ids)
    assert np.abs(model(ids).logits - expected).max() > 1e-2


def test_negative_control_gqa_tile_instead_of_repeat(tiny_model, monkeypatch):
    hf, folder = tiny_model("llama", num_key_value_heads=2)
    model = minilm.load(folder, progress=False, backend="numpy")
    reference = model.backend.attention

    def tiled(q, k, v, mask, scale):  # kv heads tiled [0,1,0,1] instead of repeated [0,0,1,1]
        return reference(q, np.tile(k, (1, 1, 2, 1)), np.tile(v, (1, 1, 2, 1)), mask, scale)
    model.backend.attention = tiled
    ids = random_ids(1, 16)
    expected, _ = hf_forward(hf, ids)
    assert np.abs(model(ids).logits - expected).max() > 1e-2
