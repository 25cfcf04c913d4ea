"""Generation parity with transformers: greedy ids, logits processors, stopping, batching."""
import numpy as np
import pytest
import torch

import minilm
from minilm.generate import GenerationError, process_scores, make_generation_config
from minilm.ops import sampling
from conftest import random_ids


def hf_generate(hf, ids, mask=None, **kwargs):
    with torch.no_grad():
        out = hf.generate(torch.as_tensor(ids), attention_mask=None if mask is None else torch.as_tensor(mask),
                          do_sample=False, **kwargs)
    return out.numpy()


@pytest.mark.parametrize("family,new_tokens", [("llama", 24), ("cohere", 24), ("cohere2", 40)])
def test_greedy_ids_equal_transformers(tiny_model, family, new_tokens):
    # cohere2's window is 4: 40 new tokens run far past it through the ring buffer.
    hf, folder = tiny_model(family, eos_token_id=None if family != "llama" else 2)
    ids = random_ids(1, 7, seed=3)
    expected = hf_generate(hf, ids, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    got = minilm.load(folder, progress=False, backend="numpy").generate(ids, max_new_tokens=new_tokens, eos_token_id=[])
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("family", ["llama", "cohere2"])
def test_left_padded_batch_stops_per_row(tiny_model, family):
    hf, folder = tiny_model(family)
    ids = random_ids(2, 9, seed=5)
    mask = np.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0
    model = minilm.load(folder, progress=False, backend="numpy")
    # Pick eos ids that one row actually produces, so per-row stopping and padding is exercised.
    free = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    eos = [int(free[0, 12]), 999 % 256]
    expected = hf_generate(hf, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos)
    np.testing.assert_array_equal(got, expected)
    assert got.shape[1] < free.shape[1] or (got[0, 13:] == 0).all()


def test_repetition_penalty_greedy_equals_transformers(tiny_model):
    hf, folder = tiny_model("llama")
    ids = random_ids(1, 6, seed=2)
    expected = hf_generate(hf, ids, max_new_tokens=16, repetition_penalty=1.7, eos_token_id=None, pad_token_id=0)
    got = minilm.load(folder, progress=False, backend="numpy").generate(ids, max_new_tokens=16, repetition_penalty=1.7,
                                                       eos_token_id=[])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_k=0, top_p=0.8),
    dict(top_k=50, top_p=0.9, temperature=1.3),
    dict(top_k=None, min_p=0.1),
    dict(repetition_penalty=1.3, top_k=10, top_p=0.7, min_p=0.05, temperature=0.5),
])
def test_processors_equal_transformers_on_random_logits(kwargs):
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers.generation.utils import GenerationMixin
    rng = np.random.default_rng(0)
    scores = (rng.standard_normal((3, 300)) * 3).astype(np.float32)
    scores[1, 10:20] = scores[1, 5]  # ties at the top-k boundary
    seq = rng.integers(0, 300, size=(3, 12))
    hf_cfg = HFGenerationConfig(do_sample=True, **{"top_k": 50, **kwargs})
    class HFStub(GenerationMixin):  # just enough of a model for transformers to build its processor list
        generation_config = hf_cfg
        config = type("C", (), {"is_encoder_decoder": False})()
        device = torch.device("cpu")
    processors = HFStub()._get_logits_processor(
        generation_config=hf_cfg, input_ids_seq_length=12, encoder_input_ids=torch.as_tensor(seq),
        prefix_allowed_tokens_fn=None, logits_processor=None)
    expected = processors(torch.as_tensor(seq), torch.as_tensor(scores)).numpy()

    class Stub:
        config = type("C", (), {"eos_token_id": 2, "pad_token_id": 0})()
    cfg = make_generation_config(Stub, do_sample=True, **kwargs)
    got = process_scores(scores, seq, np.zeros((3, 12), bool), cfg)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    assert np.abs(got[finite] - expected[finite]).max() < 1e-5


def test_seeded_sampling_is_reproducible(tiny_model):
    _, folder = tiny_model("cohere")
    model = minilm.load(folder, progress=False, backend="numpy")
    ids = random_ids(1, 5)
    a = model.generate(ids, do_sample=True, max_new_tokens=12, seed=7, eos_token_id=[])
    b = model.generate(ids, do_sample=True, max_new_tokens=12, seed=7, eos_token_id=[])
    c = model.generate(ids, do_sample=True, max_new_tokens=12, seed=8, eos_token_id=[])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampling_follows_the_distribution():
    # 20k draws from a known distribution: frequencies within 1.5% of the probabilities.
    rng = np.random.default_rng(0)
    scores = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    draws = np.array([sampling.sample(scores, rng)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(freq - [0.5, 0.3, 0.15, 0.05]).max() < 0.015


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(max_new_tokens=0), r"max_new_tokens=0"),
    (dict(temperature=-1.0), r"temperature=-1.0"),
    (dict(top_p=0.0), r"top_p=0.0"),
    (dict(top_p=1.5), r"top_p=1.5"),
])
def test_bad_generation_arguments(tiny_model, kwargs, pattern):
    _, folder = tiny_model("llama")
    model = minilm.load(folder, progress=False, backend="numpy")
    with pytest.raises(GenerationError, match=pattern):
        model.generate(random_ids(1, 4), **kwargs)


def test_prompt_too_long_and_empty(tiny_model):
    _, folder = tiny_model("llama")
    model = minilm.load(folder, progress=False, backend="numpy")
    with pytest.raises(GenerationError, match=r"max_position_embeddings=128"):
        model.generate(random_ids(1, 130))
    with pytest.raises(GenerationError, match=r"empty"):
        model.generate(np.zeros((1, 0), dtype=np.int64))


def test_float_ids_and_empty_stop_strings_are_refused(tiny_model):
    _, folder = tiny_model("llama")
    model = minilm.load(folder, progress=False, backend="numpy")
    with pytest.raises(GenerationError, match=r"input_ids must hold integer token ids, not float64"):
        model.generate(np.array([[1.5, 2.0]]))                 # would silently run as tokens 1 and 2
    with pytest.raises(GenerationError, match=r"shape \(1, 2, 2\)"):
        model.generate(np.ones((1, 2, 2), dtype=np.int64))
    for stop in ([""], [3], ["ok", None]):
        with pytest.raises(GenerationError, match=r"stop_strings=.* must be non-empty strings"):
            model.generate(random_ids(1, 4), stop_strings=stop, tokenizer=object())
    assert model.generate(random_ids(1, 4).astype(np.int32), max_new_tokens=2).shape == (1, 6)   # any int dtype


def byte_tokenizer(folder):
    """A 256-token byte-level tokenizer (token id == byte), saved beside a tiny model.

    Multi-byte characters span several tokens, which is what streaming must handle."""
    import json
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(f"{folder}/tokenizer.json")
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast"}, open(f"{folder}/tokenizer_config.json", "w"))
    from minilm.tokenizer import Tokenizer as MiniTokenizer
    return MiniTokenizer.from_pretrained(folder)


def test_stream_text_pieces_join_to_the_full_decode(tiny_model):
    from minilm.generate import stream_text
    _, folder = tiny_model("llama")
    tokenizer = byte_tokenizer(folder)
    model = minilm.load(folder, progress=False, backend="numpy")
    ids = np.array([tokenizer.encode("héllo wörld ✓ ")])
    pieces = list(stream_text(model, tokenizer, ids, max_new_tokens=40, eos_token_id=[]))
    full = model.generate(ids, max_new_tokens=40, eos_token_id=[])
    assert "".join(pieces) == tokenizer.decode(full[0, ids.shape[1]:])
    assert len(pieces) > 1


def test_stop_strings_equal_transformers(tiny_model):
    from transformers import PreTrainedTokenizerFast
    hf, folder = tiny_model("llama")
    tokenizer = byte_tokenizer(folder)
    model = minilm.load(folder, progress=False, backend="numpy")
    ids = np.array([tokenizer.encode("abc")])
    free = model.generate(ids, max_new_tokens=40, eos_token_id=[])[0, 3:]
    ascii_pairs = [k for k in range(5, 38) if all(32 <= t < 127 for t in free[k:k + 2])]
    assert ascii_pairs, "the random model produced no two printable ASCII bytes in a row"
    k = ascii_pairs[0]
    stop = tokenizer.decode(free[k:k + 2])
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=f"{folder}/tokenizer.json")
    with torch.no_grad():
        expected = hf.generate(torch.as_tensor(ids), max_new_tokens=40, do_sample=False, stop_strings=[stop],
                               tokenizer=hf_tok, eos_token_id=None, pad_token_id=0).numpy()
    got = model.generate(ids, max_new_tokens=40, eos_token_id=[], stop_strings=[stop], tokenizer=tokenizer)
    np.testing.assert_array_equal(got, expected)
    assert got.shape[1] < 3 + 40


@pytest.mark.parametrize("backend", ["numba", "cuda-emulated"])
def test_seeded_sampling_same_on_every_backend(tiny_model, backend):
    # The processors run on the host with each backend's filters: same seed, same tokens as the reference.
    _, folder = tiny_model("llama")
    ids = random_ids(1, 5)
    kwargs = dict(do_sample=True, max_new_tokens=10, seed=3, top_k=20, top_p=0.8, eos_token_id=[])
    reference = minilm.load(folder, progress=False, backend="numpy").generate(ids, **kwargs)
    other = minilm.load(folder, progress=False, backend=backend).generate(ids, **kwargs)
    np.testing.assert_array_equal(other, reference)
