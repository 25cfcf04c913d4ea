"""minilm.testing's random checkpoints: the real configs have exactly transformers' tensors, and
every storage the tool writes loads and runs."""
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import minilm
from minilm.cli import main
from minilm.config import parse_config
from minilm.models import FAMILIES
from minilm.testing import BNB_FORMATS, DTYPES, GGUF_FORMATS, REAL_CONFIGS, TORCHAO_FORMATS, random_checkpoint, tiny_config


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_configs_have_transformers_tensor_names_and_shapes(name):
    config = dict(REAL_CONFIGS[name])
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device("meta"):                       # shapes only: no 7-35B of memory
        hf = AutoModelForCausalLM.from_config(hf_config)
    expected = {k: tuple(v.shape) for k, v in hf.state_dict().items() if not k.endswith("inv_freq")}
    if hf_config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    parsed = parse_config(REAL_CONFIGS[name])
    ours = {k: s.shape for k, s in FAMILIES[parsed.model_type].tensor_specs(parsed).items()}
    if parsed.tie_word_embeddings:
        ours.pop("lm_head.weight")
    assert ours == expected
    print(f"{name}: {sum(int(np.prod(s)) for s in expected.values()) / 1e9:.2f} B parameters")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["llama", "cohere", "cohere2"])
def test_a_tiny_random_checkpoint_loads_and_runs(family, dtype, tmp_path):
    path = random_checkpoint(tiny_config(family), tmp_path, dtype=dtype, seed=1)
    assert path.endswith(".gguf") == (dtype in GGUF_FORMATS)
    backend = "numpy" if dtype == "float16" else "numba"
    model = minilm.load(path, backend=backend, weight_dtype="float32", progress=False)
    logits = model(np.array([[3, 4, 5, 6]])).logits
    assert logits.shape == (1, 4, 256) and np.isfinite(logits).all() and logits.std() > 0
    quantized = model.weights["model.layers.0.mlp.up_proj.weight"].format
    assert quantized == (dtype if dtype in (*GGUF_FORMATS, *BNB_FORMATS, *TORCHAO_FORMATS) else "float32")


def test_the_command_writes_what_it_says(tmp_path, capsys):
    assert main(["random-checkpoint", "--config", "cohere2", "--dtype", "q4_0", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "model.gguf" in out and "minilm.load(" in out
    model = minilm.load(str(tmp_path / "out" / "model.gguf"), progress=False)
    assert model.weights["model.layers.0.mlp.up_proj.weight"].format == "q4_0"
