"""The tape of named intermediates (docs/tape.md).

Off by default and keeps nothing; the same names on every backend; and every
value equals transformers' own intermediate, captured with forward hooks
(minilm.parity.transformers_tape) on the same checkpoint.
"""

import numpy as np
import pytest
import torch

import minilm
from minilm.models import FAMILIES as FAMILY_CLASSES
from minilm.parity import transformers_tape
from conftest import random_ids

FAMILIES = {"llama": {}, "cohere": {"use_qk_norm": True}, "cohere2": {}}


def expected_names(config) -> list[str]:
    """The documented names (docs/tape.md), in execution order."""
    names = ["embed"]
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}"
        names += [f"{p}.attn_norm", f"{p}.attn.q", f"{p}.attn.k", f"{p}.attn.v"]
        if config.use_qk_norm:
            names += [f"{p}.attn.q_norm", f"{p}.attn.k_norm"]
        if FAMILY_CLASSES[config.model_type].layer_uses_rope(config, i):
            names += [f"{p}.attn.q_rope", f"{p}.attn.k_rope"]
        names += [f"{p}.attn.mask", f"{p}.attn.probs", f"{p}.attn.context", f"{p}.attn.out"]
        if config.model_type == "llama":             # the sequential block's second norm
            names += [f"{p}.mlp_norm"]
        names += [f"{p}.mlp.gate", f"{p}.mlp.up", f"{p}.mlp.act", f"{p}.mlp.out", f"{p}.out"]
    return names + ["final_norm", "logits"]


def rows(name, value, keep):
    """The non-pad query rows of a tape value: keep [B, T]; attn.probs is [B, H, T, S]."""
    return value.transpose(0, 2, 1, 3)[keep] if name.endswith("attn.probs") else value[keep]


def padded_batch(length=10, pad=3):
    ids = random_ids(2, length, seed=1)
    mask = np.ones_like(ids)
    ids[1, :pad], mask[1, :pad] = 0, 0
    return ids, mask


def test_tape_is_off_by_default_and_keeps_nothing(tiny_model):
    _, folder = tiny_model("llama")
    model = minilm.load(folder, progress=False, backend="numpy")
    calls = []
    to_numpy = model.backend.to_numpy
    model.backend.to_numpy = lambda x: calls.append(1) or to_numpy(x)
    out = model(random_ids(1, 6))
    assert out.tape is None
    assert len(calls) == 1  # only the logits leave the backend; no intermediate is copied
    model.backend.to_numpy = to_numpy


def test_tape_true_and_a_caller_dict(tiny_model):
    _, folder = tiny_model("llama")
    model = minilm.load(folder, progress=False, backend="numpy")
    ids = random_ids(1, 6)
    out = model(ids, tape=True)
    assert list(out.tape) == expected_names(model.config)
    assert all(isinstance(v, np.ndarray) for v in out.tape.values())
    mine = {}
    out2 = model(ids, tape=mine)
    assert out2.tape is mine and list(mine) == list(out.tape)
    np.testing.assert_array_equal(mine["logits"], out.logits)
    # The recorded arrays are copies: later steps cannot change them.
    assert not np.shares_memory(mine["layers.0.attn.k"], model.weights["model.layers.0.self_attn.k_proj.weight"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tape_names_and_shapes(tiny_model, family):
    _, folder = tiny_model(family, **FAMILIES[family])
    model = minilm.load(folder, progress=False, backend="numpy")
    cfg = model.config
    B, T = 2, 7
    tape = model(random_ids(B, T), tape=True).tape
    assert list(tape) == expected_names(cfg)
    H, KV, HD, D, F = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                       cfg.intermediate_size)
    assert tape["embed"].shape == (B, T, D)
    assert tape["layers.0.attn.q"].shape == (B, T, H, HD)
    assert tape["layers.0.attn.k"].shape == tape["layers.0.attn.v"].shape == (B, T, KV, HD)
    assert tape["layers.0.attn.mask"].shape == (B, T, T) and tape["layers.0.attn.mask"].dtype == bool
    assert tape["layers.0.attn.probs"].shape == (B, H, T, T) and tape["layers.0.attn.probs"].dtype == np.float32
    assert tape["layers.0.attn.context"].shape == (B, T, H * HD)
    assert tape["layers.0.mlp.act"].shape == (B, T, F)
    assert tape["logits"].shape == (B, T, cfg.vocab_size)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tape_equals_transformers_intermediates(tiny_model, family):
    """Every name transformers' hooks can see, on every non-pad position, left-padded batch."""
    hf, folder = tiny_model(family, **FAMILIES[family])
    model = minilm.load(folder, progress=False, backend="numpy")
    ids, mask = padded_batch()
    ours = model(ids, attention_mask=mask, tape=True).tape
    with torch.no_grad(), transformers_tape(hf) as ref:
        ref["logits"] = hf(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    keep = mask.astype(bool)                                   # pad query rows differ by design
    checked = []
    for name, value in ours.items():
        if name.endswith("attn.mask"):
            np.testing.assert_array_equal(value, ref[name], err_msg=name)  # pad rows included
        else:
            err = np.abs(rows(name, value, keep) - rows(name, ref[name], keep)).max()
            assert err < 1e-4, f"{name}: max abs error {err:.3g}"
        checked.append(name)
    assert checked == expected_names(model.config)            # nothing skipped: hooks cover every name
    assert set(ref) == set(ours)


def test_tape_during_cached_decode_matches_transformers(tiny_model):
    """Cohere2 decoding past the window: the decode-step tape matches transformers' decode step."""
    hf, folder = tiny_model("cohere2")
    model = minilm.load(folder, progress=False, backend="numpy")
    ids = random_ids(1, 9, seed=2)                             # 9 > W = 4
    cache = model.new_cache(1)
    model(ids, cache=cache)
    with torch.no_grad():
        hf_cache = hf(torch.as_tensor(ids), use_cache=True).past_key_values
    step = np.array([[17]])
    ours = model(step, cache=cache, tape=True).tape
    with torch.no_grad(), transformers_tape(hf) as ref:
        hf(torch.as_tensor(step), past_key_values=hf_cache, use_cache=True)
    for name in ours:
        if name in ref and not name.endswith(("attn.mask", "attn.probs")):   # key slots: ring order here
            assert np.abs(ours[name] - ref[name]).max() < 1e-4, name
    # The decode-step mask shows which cached keys the new token saw (ring slots for sliding layers).
    assert ours["layers.0.attn.mask"].sum() == model.config.sliding_window
    assert ours["layers.3.attn.mask"].sum() == 10


def _backends():
    """numba and cuda-emulated always run (a failure to load them must fail); cuda only with a GPU."""
    from minilm.cuda import gpu_available
    return ["numba", "cuda-emulated"] + (["cuda"] if gpu_available() else [])


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tape_names_are_the_same_on_every_backend(tiny_model, family, backend):
    _, folder = tiny_model(family, **FAMILIES[family])
    ids, mask = padded_batch()
    reference = minilm.load(folder, progress=False, backend="numpy")(ids, attention_mask=mask, tape=True).tape
    model = minilm.load(folder, backend=backend, progress=False)
    tape = model(ids, attention_mask=mask, tape=True).tape
    assert list(tape) == list(reference)
    keep = mask.astype(bool)
    for name, value in tape.items():
        assert value.shape == reference[name].shape, name
        if value.dtype == bool:
            np.testing.assert_array_equal(value, reference[name], err_msg=name)
        else:
            assert np.abs(rows(name, value, keep) - rows(name, reference[name], keep)).max() < 1e-4, \
                f"{backend} {name}"
