"""The real default model, SmolLM2-135M-Instruct, against transformers on the same converted folder.

(The conversion itself is checked against transformers loading the GGUF directly in test_convert.py.)
"""
import numpy as np
import pytest
import torch

import minilm
from minilm.tokenizer import Tokenizer

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
]


@pytest.fixture(scope="module", params=["numpy", "numba"])
def smollm2(smollm2_dir, request):
    """The NumPy reference and the default Numba backend, each checked against transformers."""
    return minilm.load(smollm2_dir, backend=request.param, progress=False), Tokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def smollm2_numba(smollm2_dir):
    return minilm.load(smollm2_dir, backend="numba", progress=False), Tokenizer.from_pretrained(smollm2_dir)


def chat_ids(tokenizer, prompt):
    return np.array([tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                   add_generation_prompt=True, tokenize=True)])


def test_prompt_logits_match_transformers(smollm2, smollm2_hf):
    model, tokenizer = smollm2
    ids = chat_ids(tokenizer, CHAT_PROMPTS[2])
    with torch.no_grad():
        expected = smollm2_hf(torch.as_tensor(ids)).logits.numpy()
    got = model(ids).logits
    err = np.abs(got - expected).max()
    assert err < 1e-3, f"max abs logit difference {err:.3g}"


@pytest.mark.parametrize("prompt", CHAT_PROMPTS)
def test_greedy_generation_token_identical(smollm2_numba, smollm2_hf, prompt):
    # Generation runs on the default backend (numba); its op-level equality with numpy is in test_numba_*.
    model, tokenizer = smollm2_numba
    ids = chat_ids(tokenizer, prompt)
    with torch.no_grad():
        expected = smollm2_hf.generate(torch.as_tensor(ids), max_new_tokens=48, do_sample=False,
                                       eos_token_id=None, pad_token_id=0).numpy()
    got = model.generate(ids, max_new_tokens=48, do_sample=False, eos_token_id=[])   # its generation_config samples
    assert got.shape[1] == ids.shape[1] + 48
    np.testing.assert_array_equal(got, expected)


def test_answer_is_real(smollm2_numba):
    model, tokenizer = smollm2_numba
    ids = chat_ids(tokenizer, CHAT_PROMPTS[0])
    out = model.generate(ids, max_new_tokens=20, seed=0)      # the model card's sampling (generation_config.json)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_loss_matches_transformers(smollm2, smollm2_hf):
    model, tokenizer = smollm2
    ids = np.array([tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)])
    with torch.no_grad():
        expected = smollm2_hf(torch.as_tensor(ids), labels=torch.as_tensor(ids)).loss.item()
    assert abs(model(ids, labels=ids).loss - expected) < 1e-4
