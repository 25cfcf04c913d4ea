"""The layer-by-layer parity report (minilm.parity) on tiny models of every family."""
import argparse

import numpy as np
import pytest

import minilm
from minilm.formats import quantize
from minilm.parity import ParityReport, TokenCheck, add_arguments, main, parity_report

FAMILIES = {"llama": {}, "cohere": {"use_qk_norm": True}, "cohere2": {}}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_report_passes_on_every_family(tiny_model, family):
    _, folder = tiny_model(family, **FAMILIES[family])
    report = parity_report(folder, decode_steps=6)            # cohere2: 12 + 6 tokens, window 4
    assert report.ok, report.format()
    assert report.stages == ["prefill"] + [f"decode {k}" for k in range(1, 7)]
    assert len(report.tokens) == 7 and all(t.agrees for t in report.tokens)
    n_layers = minilm.load_config(folder).num_hidden_layers
    names = report.errors("decode 6")
    assert all(f"layers.{i}.{sub}" in names for i in range(n_layers) for sub in ("attn_norm", "attn.q", "attn.k",
               "attn.v", "attn.context", "attn.out", "mlp.out", "out"))
    assert {"embed", "final_norm", "logits"} <= set(names)
    assert max(c.max_abs for c in report.comparisons) < 1e-4
    text = report.format()
    assert "first jump: none" in text and "decode 6: max_rel per layer" in text


@pytest.mark.parametrize("family,weight,first", [
    ("llama", "model.layers.1.mlp.up_proj.weight", "layers.1.mlp.up"),
    ("cohere", "model.layers.0.self_attn.k_proj.weight", "layers.0.attn.k"),
    ("cohere2", "model.layers.3.self_attn.o_proj.weight", "layers.3.attn.out"),
])
def test_negative_control_corrupted_weight_is_named(tiny_model, family, weight, first):
    """A 1% error in one minilm weight: the report names that layer and sub-step first."""
    hf, folder = tiny_model(family)
    model = minilm.load(folder, progress=False, backend="numpy")
    model.weights[weight] = quantize(model.weights[weight].dequantize() * np.float32(1.01), "float32")
    report = parity_report(folder, decode_steps=2, model=model, hf_model=hf)
    jump = report.first_jump
    assert jump is not None and (jump.stage, jump.name) == ("prefill", first), report.format()
    assert not report.ok
    assert f"first jump: prefill {first}" in report.format()


def test_divergent_token_reports_the_top2_gap(tiny_model):
    hf, folder = tiny_model("llama")
    model = minilm.load(folder, progress=False, backend="numpy")
    name = "model.layers.1.mlp.down_proj.weight"
    model.weights[name] = quantize(-model.weights[name].dequantize(), "float32")   # a gross bug: tokens flip
    report = parity_report(folder, decode_steps=3, model=model, hf_model=hf)
    tok = report.first_divergence
    assert tok is not None and tok.reference_token != tok.minilm_token
    assert tok.reference_gap > 0 and tok.minilm_gap > 0
    assert "a real difference" in report.divergence_verdict()
    assert "top-2 logit gap" in report.format()


def test_near_tie_verdict():
    report = ParityReport("m", "llama", "numpy", 1e-4, "rel", [1, 2])
    report.tokens.append(TokenCheck("prefill", 5, 6, 1e-7, 2e-7, 3e-7))
    assert report.divergence_verdict().startswith("a near tie")


def test_prompt_as_ids_and_text_without_tokenizer(tiny_model):
    hf, folder = tiny_model("cohere2")
    report = parity_report(folder, prompt=[5, 17, 33, 9], decode_steps=0, hf_model=hf)
    assert report.prompt_ids == [5, 17, 33, 9] and report.stages == ["prefill"] and report.ok
    with pytest.raises(ValueError, match="no tokenizer"):
        parity_report(folder, prompt="hello", hf_model=hf)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        parity_report(folder, prompt=[1, 999], hf_model=hf)


def test_numba_backend_report(tiny_model):
    hf, folder = tiny_model("llama")
    report = parity_report(folder, decode_steps=2, backend="numba", hf_model=hf)
    assert report.backend == "numba" and report.ok, report.format()


def test_cli_main(tiny_model, capsys):
    _, folder = tiny_model("llama")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--model", folder, "--steps", "1", "--ids", "1,2,3,4"])) == 0
    out = capsys.readouterr().out
    assert "first jump: none" in out and "greedy tokens: all 2 agree" in out
    assert "prefill: max_abs per layer and sub-step" in out
    with pytest.raises(ValueError, match="--ids"):
        main(parser.parse_args(["--model", folder, "--ids", "1,x"]))


def test_plot(tiny_model):
    import matplotlib
    matplotlib.use("Agg")
    _, folder = tiny_model("cohere")
    ax = parity_report(folder, decode_steps=0).plot()
    assert ax.get_ylabel() == "max_rel error"


def test_a_reference_kernel_missing_here_is_a_one_line_reason(tmp_path, capsys):
    """torchao's int4 matmul is CUDA-only (torch.ops.mslk.*): without it, `minilm parity` on a torchao int4
    checkpoint says so in one line (exit 2), instead of an internal error."""
    import torch
    from minilm.cli import main as cli_main
    from minilm.testing import random_checkpoint, tiny_config
    folder = random_checkpoint(tiny_config("llama"), str(tmp_path / "int4"), dtype="int4", seed=0)
    status = cli_main(["parity", "--model", folder, "--ids", "5,6,7", "--steps", "0"])
    err = capsys.readouterr().err
    if hasattr(torch.ops.mslk, "bf16i4bf16_rowwise"):                 # a CUDA build of torchao: the report runs
        assert status in (0, 1) and "internal error" not in err
        return
    (line,) = [line for line in err.splitlines() if not line.startswith("minilm: compiling")]   # a cold cache's notes
    assert status == 2 and "Traceback" not in err
    assert line.startswith(f"minilm: error: {folder}: transformers cannot run this checkpoint here: torchao's kernel "
                          "torch.ops.mslk.bf16i4bf16_rowwise is not in this installation")


def test_other_reference_errors_are_not_relabelled():
    from types import SimpleNamespace
    from minilm.parity import reference_kernels_present
    with pytest.raises(AttributeError, match="no attribute 'weight'"):
        with reference_kernels_present(SimpleNamespace(config=SimpleNamespace()), "m"):
            raise AttributeError("'Linear' object has no attribute 'weight'")
