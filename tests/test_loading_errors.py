"""Bad configs, bad weights and bad inputs give one clear error naming what is wrong."""
import os
import struct

import numpy as np
import pytest

import minilm
from minilm.config import ConfigError, parse_config
from minilm.weights import WeightsError
from conftest import make_config


def test_unsupported_model_type():
    with pytest.raises(ConfigError, match=r"model_type='gpt2'"):
        parse_config({"model_type": "gpt2"})


@pytest.mark.parametrize("key,value,pattern", [
    ("num_key_value_heads", 3, r"num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    ("hidden_size", 66, r"hidden_size=66 is not divisible by num_attention_heads=4"),
    ("rope_parameters", {"rope_type": "magic", "rope_theta": 1.0}, r"rope_type='magic'"),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1.0}, r"needs rope_parameters\['factor'\]"),
    ("intermediate_size", None, r"missing required key 'intermediate_size'"),
    ("vocab_size", -3, r"vocab_size=-3"),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1.0, "factor": 2.0, "partial_rotary_factor": 0.5},
     r"partial_rotary_factor=0.5 is not supported with rope_type='linear'"),
])
def test_inconsistent_config_names_key_and_value(key, value, pattern):
    cfg = make_config("llama")
    if value is None:
        cfg.pop(key)
    else:
        cfg[key] = value
    with pytest.raises(ConfigError, match=pattern):
        parse_config(cfg)


def test_family_defaults():
    cohere = parse_config({k: v for k, v in make_config("cohere").items()
                           if k not in ("rope_parameters", "logit_scale", "tie_word_embeddings")})
    assert cohere.rope_parameters["rope_theta"] == 500000.0 and cohere.logit_scale == 0.0625
    assert cohere.tie_word_embeddings is True
    llama = parse_config({k: v for k, v in make_config("llama").items()
                          if k not in ("rope_parameters", "num_key_value_heads", "rms_norm_eps")})
    assert llama.rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}
    assert llama.num_key_value_heads == 4 and llama.norm_eps == 1e-6
    cohere2 = parse_config({k: v for k, v in make_config("cohere2").items() if k != "rope_parameters"})
    assert cohere2.rope_parameters["rope_theta"] == 10000.0


@pytest.fixture
def llama_folder(tiny_model):
    return tiny_model("llama")[1]


def _rewrite_tensors(folder, edit):
    """Re-save model.safetensors after edit(dict of numpy arrays)."""
    from safetensors.numpy import load_file, save_file
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_missing_tensor(llama_folder):
    _rewrite_tensors(llama_folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(WeightsError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        minilm.load(llama_folder, progress=False, backend="numpy")


def test_unexpected_tensor(llama_folder):
    _rewrite_tensors(llama_folder, lambda t: t.update({"model.layers.0.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(WeightsError, match=r"unexpected tensor 'model.layers.0.extra.weight'"):
        minilm.load(llama_folder, progress=False, backend="numpy")


def test_wrong_shape(llama_folder):
    _rewrite_tensors(llama_folder, lambda t: t.update({"model.norm.weight": np.ones(63, np.float32)}))
    with pytest.raises(WeightsError, match=r"'model.norm.weight' has shape \[63\], expected \[64\]"):
        minilm.load(llama_folder, progress=False, backend="numpy")


def test_truncated_file(llama_folder):
    path = os.path.join(llama_folder, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-1000])
    with pytest.raises(WeightsError, match=r"model.safetensors: truncated file: tensor '.*'"):
        minilm.load(llama_folder, progress=False, backend="numpy")


def test_corrupt_header(llama_folder):
    path = os.path.join(llama_folder, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    data[8:12] = b"@@@@"
    open(path, "wb").write(bytes(data))
    with pytest.raises(WeightsError, match=r"model.safetensors: corrupt safetensors header"):
        minilm.load(llama_folder, progress=False, backend="numpy")
    open(path, "wb").write(struct.pack("<Q", 10 ** 12) + bytes(data[8:]))
    with pytest.raises(WeightsError, match=r"corrupt safetensors header \(length"):
        minilm.load(llama_folder, progress=False, backend="numpy")


def test_pickle_checkpoints_are_refused(llama_folder):
    os.remove(os.path.join(llama_folder, "model.safetensors"))
    open(os.path.join(llama_folder, "pytorch_model.bin"), "wb").write(b"not unpickled")
    with pytest.raises(WeightsError, match=r"safetensors only \(never unpickles\)"):
        minilm.load(llama_folder, progress=False, backend="numpy")


def test_missing_folder_and_unknown_repo():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        minilm.load("./no/such/folder", progress=False, backend="numpy")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hugging Face cache"):
        minilm.load("nobody-xyz/not-a-model", progress=False, backend="numpy")


def test_hub_id_resolves_from_local_cache(llama_folder, tmp_path, monkeypatch):
    # Lay the checkpoint out as huggingface_hub's cache does, then load by repo id, offline.
    import shutil
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "hub" / "models--tiny--llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(llama_folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    model = minilm.load("tiny/llama", progress=False, backend="numpy")
    assert model.config.model_type == "llama"


def test_token_ids_outside_vocabulary(llama_folder):
    model = minilm.load(llama_folder, progress=False, backend="numpy")
    with pytest.raises(ValueError, match=r"token id 256 in input_ids is outside the vocabulary \[0, 256\)"):
        model(np.array([[1, 256]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match=r"must be integers"):
        model(np.array([[1.0, 2.0]]))
