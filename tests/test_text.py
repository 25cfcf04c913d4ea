"""minilm.load() with no argument, and the one-call text helpers (minilm.generate_text, minilm.stream)."""
import pytest

import minilm
from minilm.chat import SettingsError


@pytest.fixture(scope="module")
def default_model(smollm2_dir):
    return minilm.load()


def test_load_without_a_path_runs_the_default_gguf_with_its_generation_config(default_model):
    assert default_model.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert default_model.weights["model.layers.0.self_attn.q_proj.weight"].format == "q4_1"
    assert default_model.generation_config.get("temperature") == 0.2     # what `minilm generate` samples with


def test_generate_text_is_the_streamed_pieces_and_the_greedy_ids(default_model):
    tok = minilm.tokenizer_for(default_model)
    text = minilm.generate_text(default_model, "Name a colour.", temperature=0, max_new_tokens=6)
    pieces = list(minilm.stream(default_model, [{"role": "user", "content": "Name a colour."}], temperature=0,
                                max_new_tokens=6))
    ids = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                  tokenize=True)
    new = default_model.generate([ids], max_new_tokens=6, do_sample=False)
    assert text == "".join(pieces) == tok.decode(new[0, len(ids):], skip_special_tokens=True)
    assert len(pieces) > 1


def test_bad_prompts_and_settings_are_refused_before_generating(default_model):
    with pytest.raises(ValueError, match="the prompt is empty"):
        minilm.stream(default_model, "  ")
    with pytest.raises(TypeError, match="prompt must be a string"):
        minilm.stream(default_model, [{"text": "hi"}])
    with pytest.raises(TypeError, match="unknown setting 'temprature'"):
        minilm.stream(default_model, "Hi", temprature=0.5)
    with pytest.raises(SettingsError, match="top_p=2 must be in"):
        minilm.stream(default_model, "Hi", top_p=2)
