"""model(ids, output_attentions=True): the per-layer softmax weights [B, H, T, S], against
transformers' eager `output_attentions` on the same checkpoint.

Covered: all three families (cohere with qk-norm; cohere2's sliding layers 0-2 with W = 4 and its
global layer 3), left-padded batches (compared on non-pad query rows; pad rows are zeros here and
uniform in transformers, docs/semantics.md section 6.2), cached decoding (a full cache: same key
order as transformers; a sliding ring buffer: compared after putting the slots in token order with
out.attention_key_positions), the tape's `attn.probs`, every backend, the cost when off, and
negative controls (window W+1, unscaled scores) that must fail.
"""
import numpy as np
import pytest
import torch

import minilm
from minilm.cuda import gpu_available
from minilm.ops.attention import probs_by_token
from conftest import left_padded_batch, random_ids

FAMILIES = {"llama": {}, "cohere": {"use_qk_norm": True}, "cohere2": {}}
TOLERANCE = 1e-5


def hf_attentions(hf, ids, mask=None, past=None):
    """transformers' eager weights per layer [B, H, T, S'] and its cache afterwards."""
    with torch.no_grad():
        out = hf(torch.as_tensor(ids), attention_mask=None if mask is None else torch.as_tensor(mask),
                 past_key_values=past, use_cache=True, output_attentions=True)
    return [a.float().numpy() for a in out.attentions], out.past_key_values


def query_rows(probs, keep):
    """[B, H, T, S] -> the rows of real (non-pad) queries: keep [B, T] -> [n, H, S]."""
    return probs.transpose(0, 2, 1, 3)[keep]


def max_error(ours, theirs, keep):
    return float(np.abs(query_rows(ours, keep) - query_rows(theirs, keep)).max())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefill_weights_equal_transformers_on_a_padded_batch(tiny_model, family):
    hf, folder = tiny_model(family, **FAMILIES[family])
    model = minilm.load(folder, backend="numpy", progress=False)
    cfg = model.config
    ids, mask = left_padded_batch(length=10, pad=3)                  # 10 > W = 4: the window matters
    out = model(ids, attention_mask=mask, output_attentions=True)
    theirs, _ = hf_attentions(hf, ids, mask)
    assert len(out.attentions) == cfg.num_hidden_layers == len(theirs)
    keep = mask.astype(bool)
    for i, (ours, ref) in enumerate(zip(out.attentions, theirs)):
        assert ours.shape == ref.shape == (2, cfg.num_attention_heads, 10, 10) and ours.dtype == np.float32
        assert max_error(ours, ref, keep) < TOLERANCE, f"layer {i}"
        np.testing.assert_array_equal(out.attention_key_positions[i], np.arange(10))
    # What a pad query row holds: zeros here; transformers' eager softmax of all-minimum scores is uniform.
    pad_rows = ~keep
    for ours, ref in zip(out.attentions, theirs):
        assert not query_rows(ours, pad_rows).any()
        np.testing.assert_allclose(query_rows(ref, pad_rows), 1 / 10, rtol=1e-6)


def test_cohere2_sliding_and_global_layers_differ_as_they_should(tiny_model):
    """Layers 0-2 see W = 4 keys (the query included), layer 3 every earlier key."""
    hf, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    out = model(random_ids(1, 9), output_attentions=True)
    seen = [(a[0, 0] > 0).sum(-1) for a in out.attentions]           # visible keys per query row
    for i in range(3):
        np.testing.assert_array_equal(seen[i], np.minimum(np.arange(1, 10), 4))
    np.testing.assert_array_equal(seen[3], np.arange(1, 10))


def test_the_tape_records_the_same_weights(tiny_model):
    _, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    out = model(random_ids(2, 7), output_attentions=True, tape=True)
    for i, probs in enumerate(out.attentions):
        np.testing.assert_array_equal(out.tape[f"layers.{i}.attn.probs"], probs)


def test_cached_decoding_full_cache_has_transformers_key_order(tiny_model):
    """Llama: S = past + T in token order on both sides, so the weights compare directly."""
    hf, folder = tiny_model("llama")
    model = minilm.load(folder, backend="numpy", progress=False)
    ids, mask = left_padded_batch(length=9, pad=2)
    cache = model.new_cache(2)
    model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)
    _, past = hf_attentions(hf, ids[:, :6], mask[:, :6])
    for t in range(6, 9):
        out = model(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], cache=cache, output_attentions=True)
        theirs, past = hf_attentions(hf, ids[:, t:t + 1], mask[:, :t + 1], past)
        for ours, ref in zip(out.attentions, theirs):
            assert ours.shape == ref.shape == (2, 4, 1, t + 1)
            assert np.abs(ours - ref).max() < TOLERANCE


def test_cached_decoding_through_the_ring_buffer(tiny_model):
    """Cohere2, W = 4: prefill 6, a chunk of 3, then single tokens up to 2W past the window.

    A sliding layer's S is its cache length (W ring slots, W + T for a chunk) in ring order, and
    transformers' is its own (the last W-1 tokens + T, in token order): both go to token order
    (probs_by_token with attention_key_positions) and must then agree; the global layer's S is
    the whole sequence on both sides."""
    hf, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    W = model.config.sliding_window
    ids, mask = left_padded_batch(length=18, pad=2, seed=3)
    cache, past, checked_ring = model.new_cache(2), None, False
    for start, stop in [(0, 6), (6, 9)] + [(t, t + 1) for t in range(9, 18)]:
        out = model(ids[:, start:stop], attention_mask=mask[:, start:stop], cache=cache, output_attentions=True)
        theirs, past = hf_attentions(hf, ids[:, start:stop], mask[:, :stop], past)
        keep = mask[:, start:stop].astype(bool)
        for i, (ours, ref) in enumerate(zip(out.attentions, theirs)):
            positions = out.attention_key_positions[i]
            assert ours.shape[-1] == positions.size
            if model.config.layer_types[i] == "sliding_attention" and start > 0:
                assert ours.shape[-1] == (W if stop - start == 1 else W + stop - start)   # the cache's slots
                checked_ring |= not np.all(np.diff(positions[positions >= 0]) > 0)      # slots out of order
            ours_by_token = probs_by_token(ours, positions, stop)
            ref_by_token = np.zeros_like(ours_by_token)
            ref_by_token[..., stop - ref.shape[-1]:] = ref                 # transformers: the last S' tokens
            assert max_error(ours_by_token, ref_by_token, keep) < TOLERANCE, f"tokens {start}:{stop} layer {i}"
    assert checked_ring


def test_key_positions_of_a_ring_slot_layout(tiny_model):
    """Decode step at token 9 with W = 4: slot t % 4 holds token t, so slots hold 8, 9, 6, 7."""
    _, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    cache = model.new_cache(1)
    model(random_ids(1, 9), cache=cache)
    out = model([[17]], cache=cache, output_attentions=True)
    np.testing.assert_array_equal(out.attention_key_positions[0], [8, 9, 6, 7])
    np.testing.assert_array_equal(out.attention_key_positions[3], np.arange(10))
    by_token = probs_by_token(out.attentions[0], out.attention_key_positions[0], 10)
    assert not by_token[..., :6].any() and np.allclose(by_token.sum(-1), 1)


def _backends():
    return ["numba", "cuda-emulated"] + (["cuda"] if gpu_available() else [])


@pytest.mark.parametrize("backend", _backends())
def test_every_backend_gives_the_same_weights(tiny_model, backend):
    _, folder = tiny_model("cohere2")
    ids, mask = left_padded_batch(length=9, pad=2)
    expected = minilm.load(folder, backend="numpy", progress=False)(ids, attention_mask=mask,
                                                                     output_attentions=True).attentions
    got = minilm.load(folder, backend=backend, progress=False)(ids, attention_mask=mask,
                                                              output_attentions=True).attentions
    for ours, ref in zip(got, expected):
        np.testing.assert_allclose(ours, ref, rtol=TOLERANCE, atol=1e-6)   # pad rows too: zeros everywhere


def test_off_by_default_costs_nothing(tiny_model):
    """Without output_attentions, tape or hook: the op is never called and nothing leaves the backend
    but the logits (the same check as the tape's, tests/test_tape.py)."""
    _, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    ops, calls = model.backend, {"attention_probs": 0, "to_numpy": 0}
    originals = {name: getattr(ops, name) for name in calls}

    def counting(name):
        def call(*args):
            calls[name] += 1
            return originals[name](*args)
        return call
    for name in calls:
        setattr(ops, name, counting(name))
    try:
        out = model(random_ids(1, 6))
        assert calls == {"attention_probs": 0, "to_numpy": 1}
        assert out.attentions is None and out.attention_key_positions is None
        model(random_ids(1, 6), output_attentions=True)
        assert calls["attention_probs"] == model.config.num_hidden_layers        # the counter does count
    finally:
        for name, function in originals.items():
            setattr(ops, name, function)


def test_negative_control_window_plus_one_fails(tiny_model, tmp_path):
    """The same weights read with sliding_window W+1: the sliding layers' weights must fail the comparison."""
    import json
    import shutil
    hf, folder = tiny_model("cohere2")
    wrong = tmp_path / "wrong-window"
    shutil.copytree(folder, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["sliding_window"] += 1
    (wrong / "config.json").write_text(json.dumps(config))
    ids = random_ids(1, 10)
    ours = minilm.load(str(wrong), backend="numpy", progress=False)(ids, output_attentions=True).attentions
    theirs, _ = hf_attentions(hf, ids)
    keep = np.ones((1, 10), bool)
    assert max_error(ours[0], theirs[0], keep) > 1e-2         # layer 0: same input, one key too many per row


def test_negative_control_unscaled_scores_fail(tiny_model):
    hf, folder = tiny_model("llama")
    model = minilm.load(folder, backend="numpy", progress=False)
    right = model.backend.attention_probs
    model.backend.attention_probs = lambda q, k, mask, scale: right(q, k, mask, 1.0)   # forgot 1/sqrt(HD)
    ids = random_ids(1, 8)
    ours = model(ids, output_attentions=True).attentions
    theirs, _ = hf_attentions(hf, ids)
    assert max_error(ours[0], theirs[0], np.ones((1, 8), bool)) > 1e-2


def test_smollm2_every_layer(smollm2_dir, smollm2_hf):
    """The real default model: the weights of all 30 layers on a sentence (numba backend)."""
    from minilm.tokenizer import Tokenizer
    ids = np.array([Tokenizer.from_pretrained(smollm2_dir).encode("The capital of France is")])
    ours = minilm.load(smollm2_dir, backend="numba", progress=False)(ids, output_attentions=True).attentions
    theirs, _ = hf_attentions(smollm2_hf, ids)
    assert len(ours) == 30
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs)) < TOLERANCE
