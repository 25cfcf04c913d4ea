"""Attention-mask pictures equal transformers' masking_utils, for llama and cohere2, with padding."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from minilm.config import parse_config
from minilm.masks import MASKED, VISIBLE, add_arguments, main, mask_pictures, render_text, save_png
from conftest import make_config


def hf_config(family, **overrides):
    cfg = make_config(family, **overrides)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    config._attn_implementation = "eager"
    return config


def hf_visible(create, config, attention_mask):
    """transformers' eager additive mask [B, 1, T, T] -> visible [B, T, T] bool."""
    B, T = attention_mask.shape
    mask = create(config=config, inputs_embeds=torch.zeros(B, T, config.hidden_size),
                  attention_mask=torch.as_tensor(attention_mask), past_key_values=None)
    return (mask[:, 0] == 0).numpy()


def left_padding(lengths, T):
    return np.stack([np.arange(T) >= T - n for n in lengths]).astype(np.int64)


@pytest.mark.parametrize("family,overrides", [
    ("llama", {}),
    ("cohere2", {}),
    ("cohere2", {"sliding_window": 1}),
    ("cohere2", {"sliding_window": 3, "num_hidden_layers": 6, "layer_types": None}),  # legacy pattern
])
def test_masks_equal_transformers_masking_utils(family, overrides):
    config = hf_config(family, **overrides)
    ours_config = parse_config(make_config(family, **overrides))
    T = 11
    attention_mask = left_padding([T, T - 3, 2], T)
    pictures = mask_pictures(ours_config, T, attention_mask)
    full = hf_visible(create_causal_mask, config, attention_mask)
    sliding = hf_visible(create_sliding_window_causal_mask, config, attention_mask) if family == "cohere2" else None
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    assert len(pictures) == config.num_hidden_layers
    for i, kind in enumerate(layer_types):
        expected = sliding if kind == "sliding_attention" else full
        np.testing.assert_array_equal(pictures[i], expected, err_msg=f"layer {i} ({kind})")


def test_negative_control_window_off_by_one_differs():
    config = hf_config("cohere2")
    wrong = parse_config(make_config("cohere2", sliding_window=5))   # W + 1
    attention_mask = left_padding([9], 9)
    expected = hf_visible(create_sliding_window_causal_mask, config, attention_mask)
    assert not np.array_equal(mask_pictures(wrong, 9, attention_mask)[0], expected)


def test_one_dimensional_mask_and_no_mask():
    config = parse_config(make_config("cohere2"))
    pictures = mask_pictures(config, length=6)
    assert pictures[0].shape == (6, 6)
    assert pictures[0].sum(axis=1).tolist() == [1, 2, 3, 4, 4, 4]     # W = 4 keys including self
    assert pictures[3].sum(axis=1).tolist() == [1, 2, 3, 4, 5, 6]     # the global layer
    padded = mask_pictures(config, attention_mask=[0, 0, 1, 1, 1, 1])
    assert not padded[3][:2].any() and not padded[3][:, :2].any()   # padding is neither seen nor seeing
    with pytest.raises(ValueError, match="attention_mask has shape"):
        mask_pictures(config, length=5, attention_mask=[1, 1, 1])


def test_render_text_draws_every_layer_rule():
    config = parse_config(make_config("cohere2"))
    text = render_text(config, 6, [0, 1, 1, 1, 1, 1])
    assert "layers 0, 1, 2: sliding window W=4, RoPE" in text
    assert "layer 3: causal (full attention), no positional encoding (NoPE)" in text
    sliding, full = text.split("\n\n")[1:]

    def row(block, i):      # the cells of query row i
        line = next(line for line in block.splitlines()[2:] if line.replace("<pad>:", "").split()[0] == str(i))
        return line.split()[-6:]
    assert row(sliding, 0) == [MASKED] * 6                            # the pad row sees nothing
    assert row(sliding, 5) == [MASKED, MASKED] + [VISIBLE] * 4         # W = 4 keys including itself
    assert row(full, 5) == [MASKED] + [VISIBLE] * 5                    # the global layer: all real keys
    assert sliding.splitlines()[2].startswith("<pad>: 0")
    labelled = render_text(parse_config(make_config("llama")), 3, labels=["Hi", " there", "!"])
    assert "' there': 1 ■ ■ ⬚" in labelled


def test_png_written(tmp_path):
    path = save_png(parse_config(make_config("cohere2")), str(tmp_path / "masks.png"), 12,
                    attention_mask=left_padding([9], 12)[0])
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_cli_main(tiny_model, tmp_path, capsys):
    _, folder = tiny_model("cohere2")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    png = str(tmp_path / "cli.png")
    args = parser.parse_args(["--model", folder, "--length", "7", "--pad", "2", "--png", png])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "7 tokens, 2 padding" in out and "layer 3" in out and os.path.getsize(png) > 0
    with pytest.raises(ValueError, match="--pad"):
        main(parser.parse_args(["--model", folder, "--length", "3", "--pad", "3"]))


@pytest.mark.parametrize("name", ["command-r7b", "cohere2", "llama-2-7b"])
def test_config_names_of_random_checkpoint_are_accepted(name, tmp_path, capsys):
    """`masks --model NAME` draws what it draws for a folder holding the config random-checkpoint writes."""
    from minilm.testing import REAL_CONFIGS, TINY_CONFIGS
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(REAL_CONFIGS.get(name) or TINY_CONFIGS[name]))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--model", str(folder), "--length", "6", "--pad", "1"])) == 0
    from_folder = capsys.readouterr().out
    assert main(parser.parse_args(["--model", name, "--length", "6", "--pad", "1"])) == 0
    assert capsys.readouterr().out == from_folder
    with pytest.raises(ValueError, match="config name, without a tokenizer"):
        main(parser.parse_args(["--model", name, "--prompt", "hi"]))
