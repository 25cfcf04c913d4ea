"""generation_config.json supplies generate's defaults, as in transformers: the arguments given win,
then the checkpoint's file, then GenerationConfig's defaults."""
import json

import numpy as np
import pytest
import torch

import minilm
from minilm.generate import make_generation_config
from conftest import load_hf_model, random_ids


def write_generation_config(folder, values: dict) -> None:
    with open(f"{folder}/generation_config.json", "w") as f:
        json.dump(values, f)


def test_eos_list_and_length_from_the_file_match_transformers(tiny_model):
    _, folder = tiny_model("llama", eos_token_id=None)
    ids = random_ids(1, 7, seed=3)
    free = minilm.load(folder, backend="numpy", progress=False).generate(ids, max_new_tokens=9, eos_token_id=[])
    stop = int(free[0, 7 + 4])                                   # the 5th new token, unless it came earlier
    write_generation_config(folder, {"eos_token_id": [250, stop], "max_new_tokens": 9, "pad_token_id": 0})

    model = minilm.load(folder, backend="numpy", progress=False)
    assert model.generation_config["eos_token_id"] == [250, stop]
    got = model.generate(ids)                                    # everything from generation_config.json
    with torch.no_grad():
        expected = load_hf_model(folder).generate(torch.as_tensor(ids)).numpy()
    np.testing.assert_array_equal(got, expected)
    assert got.shape[1] <= 7 + 5 and got[0, -1] == stop


def test_sampling_settings_from_the_file_and_arguments_win(tiny_model):
    _, folder = tiny_model("llama")
    write_generation_config(folder, {"do_sample": True, "temperature": 0.5, "top_k": 3, "top_p": 0.8})
    model = minilm.load(folder, backend="numpy", progress=False)
    cfg = make_generation_config(model)
    assert (cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens) == (True, 0.5, 3, 0.8, 20)
    assert make_generation_config(model, top_k=7, do_sample=False).top_k == 7
    assert not make_generation_config(model, do_sample=False).do_sample

    ids = random_ids(1, 5, seed=1)
    sampled = model.generate(ids, max_new_tokens=12, seed=4, eos_token_id=[])
    same = model.generate(ids, max_new_tokens=12, seed=4, eos_token_id=[], do_sample=True, temperature=0.5,
                          top_k=3, top_p=0.8)
    greedy = model.generate(ids, max_new_tokens=12, eos_token_id=[], do_sample=False)
    np.testing.assert_array_equal(sampled, same)
    assert not np.array_equal(sampled, greedy)

    without = minilm.load(folder, backend="numpy", progress=False)
    without.generation_config = {}                               # no file: greedy, as GenerationConfig says
    np.testing.assert_array_equal(without.generate(ids, max_new_tokens=12, eos_token_id=[]), greedy)


def test_broken_generation_config_is_one_line(tmp_path):
    from minilm.testing import tiny_checkpoint
    folder = tiny_checkpoint("llama", tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text("{temperature: 0.2")
    with pytest.raises(ValueError, match="generation_config.json: generation_config.json is not valid JSON") as info:
        minilm.load(folder, backend="numpy", progress=False)
    assert "\n" not in str(info.value)
