"""Bad config values refused at parse time, and non-finite scores stopping generation (issue 14,
class 4 and the config weak items), with a hypothesis fuzz test of the config parser.

Before, rope_theta 0, a linear factor 0 or rms_norm_eps -1 turned into NaN inside the model,
attention turned NaN rows into zeros and the sampler turned NaN into token 0: exit 0 and
"------------". Now the config is refused naming its key, and generation stops naming the step.
"""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilm
from minilm.config import MAX_LAYERS, ConfigError, parse_config
from minilm.generate import GenerationError
from minilm.safetensors_file import read_header, save
from minilm.testing import tiny_checkpoint, tiny_config
from hostile_helpers import assert_cli_error, assert_one_line_error, run_cli, time_limit  # noqa: F401


def refused(overrides: dict, *fragments, family="llama"):
    raw = {**tiny_config(family), **overrides}          # a None value stays in (JSON null)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="cfg.json")
    assert_one_line_error(str(info.value), "cfg.json", *fragments)


def rope(**values):
    return {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **values}}


# ---------------------------------------------------------------------- class 4: values that become NaN


@pytest.mark.parametrize("theta", [0, -1.0, 1e-300, float("nan"), float("inf"), "10000", True])
def test_rope_theta_must_be_positive_and_finite(theta):
    """The issue's example (rope_theta 0 or negative) and variants: underflow in float32, NaN, a string."""
    refused(rope(rope_theta=theta), "rope_theta")


@pytest.mark.parametrize("factor", [0, -2.0, float("nan"), "2"])
def test_rope_scaling_factor_must_be_positive(factor):
    refused(rope(rope_type="linear", factor=factor), "'factor'")
    refused({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": factor}}, "'factor'")


@pytest.mark.parametrize("family,key", [("llama", "rms_norm_eps"), ("cohere", "layer_norm_eps"),
                                        ("cohere2", "layer_norm_eps")])
@pytest.mark.parametrize("eps", [-1.0, float("nan"), float("inf"), "1e-5", None])
def test_norm_epsilon_must_be_a_finite_number_at_least_zero(family, key, eps):
    if eps is None:                     # None means "the family default" (negative control)
        assert parse_config(tiny_config(family, **{key: None})).norm_eps > 0
        return
    refused({key: eps}, key, family=family)


@pytest.mark.parametrize("rope_parameters,fragment", [
    ({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0},
     "high_freq_factor"),                                                          # 0/0 in the smoothing
    ({"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 7 + [0.0], "long_factor": [1.0] * 8},
     "short_factor"),
    ({"rope_type": "yarn", "rope_theta": 1.0, "factor": 4.0}, "non-finite RoPE frequencies"),  # log(1) divides
    ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "beta_fast": -1}, "beta_fast"),
    ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "mscale": float("nan")}, "mscale"),
    ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0}, "partial_rotary_factor"),
    ({"rope_type": ["default"], "rope_theta": 1e4}, "rope_type"),
])
def test_rope_combinations_that_are_not_finite(rope_parameters, fragment):
    refused({"rope_parameters": rope_parameters}, fragment)


def test_dynamic_rope_with_head_dim_2_divides_by_zero():
    refused({"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 4,
             "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            "non-finite RoPE frequencies")


def test_every_rope_type_still_parses():
    """Negative control: valid values of every type pass the new checks unchanged."""
    valid = [{"rope_type": "default", "rope_theta": 10000.0},
             {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
             {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
             {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32, "beta_slow": 1},
             {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
             {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
              "original_max_position_embeddings": 64}]
    for parameters in valid:
        assert parse_config(tiny_config("llama", rope_parameters=parameters)).rope_parameters["rope_type"] == \
            parameters["rope_type"]


# ---------------------------------------------------------------------- weak: wrong types and ranges


@pytest.mark.parametrize("key,value", [
    ("tie_word_embeddings", "false"), ("attention_bias", "no"), ("mlp_bias", 1), ("hidden_size", "64"),
    ("num_key_value_heads", 0), ("head_dim", 2.5), ("max_position_embeddings", -1),
    ("max_position_embeddings", None), ("vocab_size", True), ("architectures", "LlamaForCausalLM"),
    ("architectures", [3]), ("hidden_act", ["silu"]), ("rope_scaling", "linear"), ("id2label", [1, 2]),
    ("num_hidden_layers", MAX_LAYERS + 1), ("head_dim", 2**40),
])
def test_values_of_the_wrong_type_name_the_key(key, value):
    refused({key: value}, key)


@pytest.mark.parametrize("family,key", [("cohere", "use_qk_norm"), ("cohere", "logit_scale"),
                                        ("cohere2", "sliding_window"), ("cohere2", "sliding_window_pattern")])
def test_family_keys_of_the_wrong_type(family, key):
    overrides = {key: "true" if key == "use_qk_norm" else float("nan") if key == "logit_scale" else "4"}
    if key == "sliding_window_pattern":
        overrides["layer_types"] = None
    refused(overrides, key, family=family)


@pytest.mark.parametrize("key,value,fragment", [
    ("pad_token_id", 256, "outside the vocabulary [0, 256)"),     # the example
    ("pad_token_id", -1, "outside the vocabulary"),
    ("pad_token_id", "0", "must be an integer token id"),
    ("bos_token_id", 1.5, "must be an integer token id"),
    ("eos_token_id", "2", "a token id or a list of token ids"),
    ("eos_token_id", [2, None], "a token id or a list of token ids"),
])
def test_token_ids(key, value, fragment):
    refused({key: value}, key, fragment)


def test_token_ids_negative_control():
    cfg = parse_config({**tiny_config("llama"), "pad_token_id": 255, "eos_token_id": [2, 7], "bos_token_id": None})
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (255, [2, 7], None)


def test_cli_names_the_key(tmp_path, capsys):
    """What the issue saw as "------------" with exit 0 is now exit 2 and one line naming the key."""
    from minilm.cli import main
    folder = tiny_checkpoint("llama", str(tmp_path / "m"))
    config = json.load(open(os.path.join(folder, "config.json")))
    config["rope_parameters"]["rope_theta"] = 0
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    assert main(["masks", "--model", folder]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minilm: error: ") and "rope_theta" in err[0], err


# A fuzz test: a valid config with some keys replaced by arbitrary JSON values either parses
# into a config that builds finite RoPE frequencies, or raises ConfigError naming the source.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10)
KEYS = sorted({key for family in ("llama", "cohere", "cohere2") for key in tiny_config(family)} |
              {"rope_scaling", "rope_theta", "head_dim", "sliding_window_pattern", "num_labels", "id2label",
               "original_max_position_embeddings", "partial_rotary_factor", "use_qk_norm"})
ROPE_KEYS = ["rope_type", "rope_theta", "factor", "original_max_position_embeddings", "low_freq_factor",
             "high_freq_factor", "short_factor", "long_factor", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate", "partial_rotary_factor", "type"]
ROPE_VALUES = st.sampled_from(["default", "linear", "dynamic", "yarn", "longrope", "llama3"]) | \
    st.floats(-10, 1e6) | st.lists(st.floats(-1, 4), min_size=8, max_size=8) | JSON_VALUES


def parses_or_refused(raw):
    try:
        cfg = parse_config(raw, source="fuzz.json")
    except ConfigError as e:
        assert "fuzz.json" in str(e) and "\n" not in str(e)
        return None
    assert cfg.num_hidden_layers <= MAX_LAYERS and cfg.norm_eps >= 0
    from minilm.ops.rope import RotaryEmbedding
    assert np.isfinite(RotaryEmbedding(cfg.rope_parameters, cfg.head_dim, cfg.max_position_embeddings).inv_freq).all()
    return cfg


@pytest.mark.time_limit(60)
@settings(max_examples=150, deadline=2000)
@given(family=st.sampled_from(["llama", "cohere", "cohere2"]),
       changes=st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=3),
       rope_changes=st.dictionaries(st.sampled_from(ROPE_KEYS), ROPE_VALUES, max_size=4))
def test_fuzz_config_values(family, changes, rope_changes):
    raw = {**tiny_config(family), **changes}
    if rope_changes and isinstance(raw.get("rope_parameters"), dict):
        raw["rope_parameters"] = {**raw["rope_parameters"], **rope_changes}
    parses_or_refused(raw)


@pytest.mark.time_limit(60)
@settings(max_examples=100, deadline=2000)
@given(raw=JSON_VALUES)
def test_fuzz_config_of_any_shape(raw):
    parses_or_refused(raw)


def test_fuzz_negative_control():
    assert all(parses_or_refused(tiny_config(f)) is not None for f in ("llama", "cohere", "cohere2"))


# ---------------------------------------------------------------------- class 4: non-finite scores


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tiny_checkpoint("llama", str(tmp_path_factory.mktemp("gen") / "llama"))
    return minilm.load(folder, backend="numpy", progress=False), folder


PROMPT = np.array([[5, 9, 14, 3]])


@pytest.mark.parametrize("kwargs", [dict(do_sample=True, temperature=1e-45)])   # the example
def test_sampling_arguments_that_make_scores_non_finite(tiny_llama, kwargs):
    """A finite temperature that divides finite logits into infinities (NaN arguments are refused before
    the first step, naming the argument: tests/test_hostile_inputs.py)."""
    model, _ = tiny_llama
    with pytest.raises(GenerationError) as info:
        model.generate(PROMPT, max_new_tokens=4, seed=0, **kwargs)
    assert_one_line_error(str(info.value), "step 0", "scores")


def test_huge_finite_weight_stops_generation_at_the_step(tmp_path):
    """A float32 weight of 3e38 is finite (and loads), but the logits overflow to inf."""
    folder = tiny_checkpoint("llama", str(tmp_path / "huge"))
    path = os.path.join(folder, "model.safetensors")
    tensors = {name: t.read() for name, t in read_header(path)[0].items()}
    tensors["lm_head.weight"] = np.full_like(tensors["lm_head.weight"], 3e38)
    save(path, tensors)
    model = minilm.load(folder, backend="numpy", progress=False)
    with pytest.raises(GenerationError) as info, np.errstate(over="ignore", invalid="ignore"):
        model.generate(PROMPT, max_new_tokens=4)
    assert_one_line_error(str(info.value), "step 0", "logits", "NaN or Inf")


def test_finite_generation_and_filtered_scores_still_work(tiny_llama):
    """Negative control: -inf scores of filtered tokens (top_k=1, min_p) are not an error."""
    model, _ = tiny_llama
    greedy = model.generate(PROMPT, max_new_tokens=6)
    sampled = model.generate(PROMPT, max_new_tokens=6, do_sample=True, top_k=1, seed=3)
    assert np.array_equal(greedy, sampled)
    model.generate(PROMPT, max_new_tokens=3, do_sample=True, min_p=0.5, temperature=1e-3, seed=0)


@pytest.mark.time_limit(200)
def test_cli_reports_the_step(tmp_path):
    from hostile_helpers import byte_level_tokenizer
    folder = tiny_checkpoint("llama", str(tmp_path / "m"))
    byte_level_tokenizer(folder)
    result = run_cli("generate", "hello", "--model", folder, "--temperature", "1e-45", "--backend", "numpy")
    assert_cli_error(result, "step 0")
