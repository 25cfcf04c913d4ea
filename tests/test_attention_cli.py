"""`minilm attention`: the weights it prints and draws are transformers' own, on the real default model."""
import sys

import numpy as np
import pytest
import torch

import minilm
from minilm import cli
from minilm.attention import attention_weights, figure, render_text
from minilm.tokenizer import Tokenizer

TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return minilm.load(smollm2_dir, backend="numba", progress=False), Tokenizer.from_pretrained(smollm2_dir)


def hf_weights(hf, tokenizer, layer):
    with torch.no_grad():
        out = hf(torch.as_tensor([tokenizer.encode(TEXT)]), output_attentions=True)
    return out.attentions[layer][0].numpy()                                   # [H, T, T]


def test_the_picture_of_one_head_is_transformers_weights(smollm2, smollm2_hf):
    model, tokenizer = smollm2
    weights, tokens = attention_weights(model, tokenizer, TEXT, layer=3)
    expected = hf_weights(smollm2_hf, tokenizer, 3)
    fig = figure(weights, tokens, layer=3, head=2)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    drawn = np.asarray(ax.get_images()[0].get_array())                      # what the PNG shows
    assert drawn.shape == (len(tokens), len(tokens)) == expected.shape[1:]
    np.testing.assert_allclose(drawn, expected[2], atol=1e-5)
    assert [t.get_text() for t in ax.get_xticklabels()] == [repr(t) for t in tokens]
    assert tokens[:3] == ["The", " quick", " brown"]
    with pytest.raises(AssertionError):                                      # negative control: a neighbour head
        np.testing.assert_allclose(drawn, expected[3], atol=1e-5)


def test_the_grid_has_every_head(smollm2, smollm2_hf):
    model, tokenizer = smollm2
    weights, tokens = attention_weights(model, tokenizer, TEXT, layer=0)
    expected = hf_weights(smollm2_hf, tokenizer, 0)
    panels = [a for a in figure(weights, tokens, layer=0).axes if a.get_visible()]
    assert [a.get_title() for a in panels] == [f"head {h}" for h in range(9)]
    for h, ax in enumerate(panels):
        np.testing.assert_allclose(np.asarray(ax.get_images()[0].get_array()), expected[h], atol=1e-5)


def test_text_lists_the_top_keys_per_query(smollm2, smollm2_hf):
    model, tokenizer = smollm2
    weights, tokens = attention_weights(model, tokenizer, TEXT, layer=3)
    expected = hf_weights(smollm2_hf, tokenizer, 3)[2]
    lines = render_text(weights, tokens, layer=3, head=2, top=2).splitlines()
    assert lines[0] == "layer 3, head 2: top 2 keys per query (weight)" and len(lines) == 1 + len(tokens)
    for i, line in enumerate(lines[1:]):
        best = int(np.argmax(expected[i]))
        assert line.split("->")[1].strip().startswith(f"{tokens[best]!r} {expected[i, best]:.2f}"), line


def test_command_line(smollm2_dir, tmp_path, capsys):
    png = tmp_path / "fox.png"
    assert cli.main(["attention", "--model", smollm2_dir, TEXT, "--layer", "3", "--head", "2", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "layer 3, head 2: top 3 keys per query" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["attention", "--model", smollm2_dir, "hi", "--layer", "30"]) == 2
    assert "minilm: error: --layer=30 must be in 0..29 (the model has 30 layers)" in capsys.readouterr().err
    assert cli.main(["attention", "--model", smollm2_dir, "hi", "--layer", "1", "--head", "9"]) == 2
    assert "minilm: error: --head=9 must be in 0..8" in capsys.readouterr().err


def test_png_without_matplotlib_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)             # as if it were not installed
    assert cli.main(["attention", "x", "--layer", "0", "--png", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err == "minilm: error: attention pictures need matplotlib: pip install matplotlib\n"


def test_ids_on_a_random_cohere2_without_tokenizer_print_transformers_weights(tiny_model, capsys):
    """The README's sliding-window recipe: `random-checkpoint --config cohere2` writes no tokenizer; --ids
    needs none. The printed top keys are transformers' weights' (its sliding layer sees at most 4 keys)."""
    hf, folder = tiny_model("cohere2")
    ids = [5, 9, 13, 17, 21, 25, 29, 33]
    assert cli.main(["attention", "--model", folder, "--ids", ",".join(map(str, ids)), "--layer", "0",
                     "--top", "8"]) == 0
    printed = capsys.readouterr().out
    with torch.no_grad():
        expected = hf(torch.as_tensor([ids]), output_attentions=True).attentions[0][0].numpy()   # [H, T, T]
    assert printed.strip() == render_text(expected, [str(i) for i in ids], 0, None, 8).strip()
    assert (expected[:, 7, :4] == 0).all()                                   # window 4: keys 0-3 masked for query 7
    for bad, message in [("5,x", "must be token ids"), ("5,256", "not below the model's vocab_size 256")]:
        assert cli.main(["attention", "--model", folder, "--ids", bad, "--layer", "0"]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["attention", "--model", folder, "--layer", "0"]) == 2
    assert "give a text to encode, or --ids" in capsys.readouterr().err


def test_a_long_text_is_refused_before_the_forward(smollm2):
    """Issue 23: 3000 tokens asked for every layer's [H, T, T] weights (7 GB, then out of memory)."""
    model, tokenizer = smollm2
    with pytest.raises(ValueError, match=r"the text is 10 tokens; minilm attention shows at most 4"):
        attention_weights(model, tokenizer, " ".join(["fox"] * 10), layer=0, max_tokens=4)
    limit = model.config.max_position_embeddings                 # a larger cap never passes the context
    with pytest.raises(ValueError, match=f"shows at most {limit} "):
        attention_weights(model, tokenizer, " fox" * (limit + 5), layer=0, max_tokens=10**9)
    weights, tokens = attention_weights(model, tokenizer, " ".join(["fox"] * 4), layer=0, max_tokens=4)
    assert weights.shape == (9, 4, 4) and len(tokens) == 4                  # negative control: at the cap
