"""The minilm command: real answers from the default model, and one-line errors with exit status 2."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from minilm.cli import main
from conftest import make_config, build_hf_model


def run_cli(*args, stdin=None, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "minilm.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=600)


def test_generate_default_model_answers(smollm2_dir):
    result = run_cli("generate", "What is the capital of France?", "--max-new-tokens", "24", "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "tokens/s" in result.stderr


def test_chat_multi_turn_reset_and_eof(smollm2_dir):
    turns = "What is the capital of France?\n/reset\nAnd what is 2+2?\n"
    result = run_cli("chat", "--max-new-tokens", "16", "--seed", "0", stdin=turns)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "[conversation cleared]" in result.stderr
    assert result.stderr.count("tokens/s") == 2


@pytest.mark.parametrize("args,message", [
    (["generate", ""], "the prompt is empty"),
    (["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens=0"),
    (["generate", "hi", "--temperature", "-1"], "--temperature=-1.0"),
    (["generate", "hi", "--top-p", "1.5"], "--top-p=1.5"),
    (["generate", "hi", "--model", "/no/such/model"], "does not exist"),
    (["generate", "hi", "--model", "/no/such/file.gguf"], "does not exist"),
])
def test_bad_input_one_line_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minilm: error:") and message in err[0], err


def test_checkpoint_without_tokenizer(tmp_path, capsys):
    build_hf_model(make_config("llama"), tmp_path / "m")
    capsys.readouterr()  # drop transformers' save progress output
    assert main(["generate", "hi", "--model", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer.json" in err[0]


def test_prompt_longer_than_context(smollm2_dir, capsys):
    assert main(["generate", "word " * 9000, "--backend", "numpy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_position_embeddings=8192" in err[0]


def test_unsupported_gguf_architecture(tmp_path, capsys):
    import gguf
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert main(["generate", "hi", "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpt2" in err[0]
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_perplexity(smollm2_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    result = run_cli("perplexity", str(text), "--context", "64")
    assert result.returncode == 0, result.stderr
    ppl = float(result.stdout.split()[1])
    assert 1.0 < ppl < 50.0  # repeated text is easy to predict once seen


def test_gguf_runs_as_stored_and_exact_mode_answers_as_the_float32_copy(smollm2_dir, capsys):
    from minilm.default_model import default_gguf
    ask = ["generate", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "12"]
    assert main(ask + ["--model", default_gguf(), "--mode", "exact", "--verbose"]) == 0
    stored = capsys.readouterr()
    assert "Q4_1.gguf as stored, mode exact" in stored.err
    assert "[loaded: 210 q4_1 exact, " in stored.err and "1 q8_0 exact]" in stored.err  # the file's blocks
    from minilm.ops.numba_simd import SIMD_LEVEL
    assert f"fast kernels: {SIMD_LEVEL}, " in stored.err.split("[cpu: ", 1)[1]          # the CPU and its code
    side_folder = stored.err.split("[model ", 1)[1].split(";", 1)[0]
    assert sorted(os.listdir(side_folder)) == ["config.json", "generation_config.json", "minilm-conversion.json",
                                               "tokenizer.json", "tokenizer_config.json"]   # no float32 copy
    assert main(ask + ["--weight-dtype", "float32", "--verbose"]) == 0        # the converted float32 folder
    copied = capsys.readouterr()
    assert "weights float32, mode exact" in copied.err
    assert stored.out == copied.out and "Paris" in stored.out


def test_quantize_mode_and_cache_dtype_reach_the_model(smollm2_dir, capsys):
    ask = ["generate", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "8", "--verbose"]
    assert main(ask + ["--weight-dtype", "float32", "--quantize", "q8_0", "--mode", "fast",
                       "--cache-dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert "weights float32, linear layers quantized to q8_0, mode fast, cache bfloat16" in err
    assert "[loaded: 210 q8_0 fast, " in err                  # SmolLM2's 30 layers x 7 matrices, really q8_0
    # Up to 8 tokens: fast mode's int8 activations may meet the end token sooner on another CPU's rounding.
    assert re.search(r"\[[1-8] tokens; first after", err), err


def test_a_gguf_without_a_usable_tokenizer_is_named(tmp_path, capsys, monkeypatch):
    from minilm.testing import random_checkpoint, tiny_config
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path / "cache"))
    gguf = random_checkpoint(tiny_config("llama"), tmp_path / "m", dtype="q8_0")   # placeholder 'llama' vocabulary
    assert main(["generate", "hi", "--model", gguf]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tokenizer minilm can use (unsupported tokenizer model 'llama'" in err[0], err


def test_a_quantized_load_says_how_many_layers_it_quantized_and_why_not_the_others(tiny_model):
    import minilm
    _, folder = tiny_model("llama")                                  # rows of 64 (q/k/v/o/gate/up), 128 (down)
    with pytest.warns(UserWarning) as caught:
        minilm.load(folder, quantize="int4", progress=False)
    (message,) = [str(w.message) for w in caught]
    assert message == (f"{folder}: int4 quantized 2 of 14 linear layers; the other 12 stay float32, because their "
                       "rows of 64 values are not a multiple of int4's group of 128 (torchao skips such layers too; "
                       "first: model.layers.0.self_attn.q_proj.weight)")


def test_cli_warnings_are_one_line_and_float16_is_not_offered(monkeypatch, capsys):
    import warnings
    from minilm import masks

    def warns(args):
        warnings.warn("something the user should know\n  over two lines", UserWarning)
        return 0
    monkeypatch.setattr(masks, "main", warns)
    assert main(["masks"]) == 0
    assert capsys.readouterr().err == "minilm: warning: something the user should know over two lines\n"
    assert warnings.showwarning is not None and warnings.showwarning.__name__ != "one_line_warning"   # restored
    with pytest.raises(SystemExit):
        main(["generate", "Hi", "--weight-dtype", "float16"])        # the default backend cannot run it
    assert "invalid choice: 'float16'" in capsys.readouterr().err
