"""Arguments of a forward, refused with one line naming the argument (issue 23)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minilm
from minilm.testing import tiny_checkpoint
from tests.hostile_helpers import time_limit  # noqa: F401  (autouse fixture)

IDS = np.array([[1, 2, 3, 4]])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return {family: minilm.load(tiny_checkpoint(family, str(folder / family)), backend="numpy", progress=False)
            for family in ("llama", "cohere2")}


@pytest.mark.parametrize("bad", [-1, "vocab"])
def test_labels_outside_the_vocabulary_are_refused_like_transformers(models, bad):
    model = models["llama"]
    V = model.config.vocab_size
    label = V if bad == "vocab" else bad
    labels = np.array([[1, 2, label, 4]])
    with pytest.raises(IndexError):                       # what transformers' loss does with it
        torch.nn.functional.cross_entropy(torch.zeros(1, V), torch.tensor([label]), ignore_index=-100)
    with pytest.raises(ValueError, match=f"label {label} is outside the vocabulary"):
        model(IDS, labels=labels)


def test_ignored_labels_still_give_the_loss(models):
    """Negative control: -100 is ignored, as in transformers, and the first label is never used."""
    out = models["llama"](IDS, labels=np.array([[-7, 2, -100, 4]]))
    assert np.isfinite(out.loss)


@pytest.mark.parametrize("kwargs, message", [
    ({"logits_to_keep": -1}, "logits_to_keep=-1 must be an integer >= 0"),
    ({"logits_to_keep": 1.5}, "logits_to_keep=1.5 must be an integer >= 0"),
    ({"position_ids": np.array([[0.0, 1.5, 2.0, 3.0]])}, "position_ids must be integers"),
    ({"position_ids": np.array([[0, 1, 2]])}, r"position_ids has shape \(1, 3\); expected \(1, 4\)"),
])
def test_bad_forward_arguments_are_named(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        models["llama"](IDS, **kwargs)


@pytest.mark.parametrize("input_ids, message", [
    (np.zeros((0, 4), np.int64), r"B >= 1 and T >= 1, got shape \(0, 4\)"),
    ([[1, 2, 3], [4, 5]], "input_ids must be a rectangular array"),
])
def test_empty_batch_and_ragged_rows_are_refused(models, input_ids, message):
    with pytest.raises(ValueError, match=message):
        models["llama"](input_ids)


def test_a_cache_of_another_model_is_refused(models):
    cache = models["cohere2"].new_cache()
    with pytest.raises(ValueError, match="the cache was not made for this llama model"):
        models["llama"](IDS, cache=cache)
    models["llama"](IDS, cache=models["llama"].new_cache())          # negative control: its own cache runs


def test_a_forward_too_large_to_mask_is_refused_before_allocating(models):
    """A 40,000-token forward needs a 1.5 GiB [B, T, S] mask: refused by name, before any work."""
    with pytest.raises(ValueError, match=r"needs a \[B, T, S\] attention mask of 1.5 GiB .*prefill_chunk"):
        models["llama"](np.ones((1, 40_000), np.int64))
    with pytest.raises(ValueError, match=r"output_attentions for 12000 tokens"):
        models["llama"](np.ones((1, 12_000), np.int64), output_attentions=True)


# --- generate() arguments and generation_config.json: typed, one line naming the key -------------

BAD_SETTINGS = [
    ("temperature", "hot"), ("temperature", float("nan")), ("do_sample", "yes"), ("max_new_tokens", True),
    ("max_new_tokens", 2.5), ("top_k", 1.5), ("top_p", float("nan")), ("min_p", "0.1"),
    ("repetition_penalty", float("inf")), ("seed", -1), ("seed", 1.5), ("eos_token_id", "2"),
    ("eos_token_id", [1.5]), ("prefill_chunk", -1), ("threads", "2"),
]


@pytest.mark.parametrize("key, value", BAD_SETTINGS)
def test_bad_generate_arguments_are_named(models, key, value):
    from minilm.generate import GenerationError
    with pytest.raises(GenerationError, match=rf"^{key}=.* must be"):
        models["llama"].generate(IDS, **{"max_new_tokens": 2, key: value})


@pytest.mark.parametrize("input_ids, message", [(np.zeros((0, 3), np.int64), r"batch >= 1"),
                                                ([[1, 2, 3], [4]], "rectangular")])
def test_generate_refuses_an_empty_batch_and_ragged_rows(models, input_ids, message):
    from minilm.generate import GenerationError
    with pytest.raises(GenerationError, match=message):
        models["llama"].generate(input_ids, max_new_tokens=2)


def test_good_generate_arguments_run(models):
    """Negative control: numpy integers and floats of the right kinds are accepted."""
    out = models["llama"].generate(IDS, max_new_tokens=np.int64(2), do_sample=np.bool_(True),
                                   temperature=np.float32(0.7), top_k=5, seed=np.int64(3), eos_token_id=[])
    assert out.shape == (1, 6)


@pytest.mark.parametrize("key, value", [(k, v) for k, v in BAD_SETTINGS
                                        if k not in ("prefill_chunk", "threads", "seed") and v == v])   # JSON: no NaN
def test_bad_generation_config_values_are_named_at_load(tmp_path, key, value):
    import json
    from minilm.errors import ConfigError
    folder = tiny_checkpoint("llama", str(tmp_path / "tiny"))
    with open(f"{folder}/generation_config.json", "w") as f:
        json.dump({"do_sample": True, key: value}, f)
    with pytest.raises(ConfigError, match=rf"generation_config.json: {key}=.* must be"):
        minilm.load(folder, backend="numpy", progress=False)


def test_generation_config_is_read_with_the_json_rules(tmp_path):
    from minilm.errors import ConfigError
    folder = tiny_checkpoint("llama", str(tmp_path / "tiny"))
    with open(f"{folder}/generation_config.json", "w") as f:
        f.write("[" * 100_000)                                   # deep nesting: not a RecursionError
    with pytest.raises(ConfigError, match="generation_config.json: generation_config.json is nested too deeply"):
        minilm.load(folder, backend="numpy", progress=False)


# --- property-based: any JSON value, any argument: the result or one named refusal ---------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3), max_leaves=5)
ARGUMENT_VALUES = JSON_VALUES | st.floats() | st.sampled_from([np.int64(3), np.float32(0.5), np.bool_(True),
                                                               np.array([1, 2]), object()])
SETTING_KEYS = ["max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                "eos_token_id", "pad_token_id"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_checkpoint("llama", str(tmp_path_factory.mktemp("fuzz") / "tiny"))


@pytest.mark.time_limit(90)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(values=st.dictionaries(st.sampled_from(SETTING_KEYS), JSON_VALUES, max_size=4))
def test_fuzz_generation_config_loads_and_generates_or_names_the_key(tiny_folder, values):
    import json
    from minilm.errors import ConfigError
    with open(f"{tiny_folder}/generation_config.json", "w") as f:
        json.dump(values, f)
    try:
        model = minilm.load(tiny_folder, backend="numpy", progress=False)
    except ConfigError as e:
        assert "\n" not in str(e) and "generation_config.json: " in str(e)
        return
    out = model.generate(IDS, max_new_tokens=2)         # every accepted file generates
    assert out.shape[0] == 1 and 4 < out.shape[1] <= 6


@pytest.mark.time_limit(90)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(arguments=st.dictionaries(st.sampled_from([k for k in SETTING_KEYS if k != "pad_token_id"]   # not an argument
                                                 + ["seed", "prefill_chunk", "threads"]),
                                 ARGUMENT_VALUES, max_size=3))
def test_fuzz_generate_arguments_run_or_are_named(models, arguments):
    from minilm.generate import GenerationError
    arguments.setdefault("max_new_tokens", 2)
    try:
        out = models["llama"].generate(IDS, **arguments)
    except GenerationError as e:
        message = str(e)
        assert "\n" not in message and any(message.startswith(f"{k}=") or f"{k}" in message for k in arguments), message
        return
    assert out.shape[0] == 1 and out.shape[1] > 4


GGUF_VALUES = (st.none() | st.booleans() | st.integers(-5, 2**64) | st.floats() | st.text(max_size=3)
               | st.lists(st.integers(0, 3) | st.text(max_size=2), max_size=3))
GGUF_KEYS = ["embedding_length", "attention.head_count", "feed_forward_length", "block_count",
             "attention.head_count_kv",
             "attention.key_length", "rope.dimension_count", "context_length", "vocab_size", "rope.freq_base",
             "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.scaling.type",
             "rope.scaling.factor", "logit_scale", "attention.sliding_window", "attention.sliding_window_pattern"]


@pytest.mark.time_limit(90)
@settings(max_examples=300, deadline=None)
@given(arch=st.sampled_from(["llama", "cohere2"]),
       changes=st.dictionaries(st.sampled_from(GGUF_KEYS + ["tokenizer.ggml.tokens", "tokenizer.ggml.eos_token_id"]),
                               GGUF_VALUES, max_size=3))
def test_fuzz_gguf_metadata_gives_a_config_or_names_the_key(arch, changes):
    """The GGUF metadata a config is made of (head counts, token lists, floats of any type): a valid
    config or one WeightsError/ConfigError line, never a ZeroDivisionError or TypeError."""
    from types import SimpleNamespace
    from minilm.config import parse_config
    from minilm.errors import ConfigError, WeightsError
    from minilm.gguf_file import gguf_config
    base = {"embedding_length": 64, "attention.head_count": 4, "feed_forward_length": 128, "block_count": 2,
            "context_length": 128, "attention.layer_norm_rms_epsilon": 1e-5, "attention.layer_norm_epsilon": 1e-5,
            "logit_scale": 0.25, "attention.sliding_window": 8}
    metadata = {"general.architecture": arch, "tokenizer.ggml.tokens": ["a", "b"],
                **{f"{arch}.{k}": v for k, v in base.items()}}
    for k, v in changes.items():
        metadata[k if k.startswith("tokenizer") else f"{arch}.{k}"] = v
    try:
        parse_config(gguf_config(SimpleNamespace(metadata=metadata, tensors={}, path="x.gguf")), source="x.gguf")
    except (WeightsError, ConfigError) as e:
        assert "\n" not in str(e)
