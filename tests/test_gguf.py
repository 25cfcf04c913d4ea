"""GGUF files loaded as stored: parity with transformers, tiny GGUFs of all three families written
with gguf-py's own quantizer, and the header parser against gguf-py's reader."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import gguf
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

import minilm
from minilm.config import parse_config
from minilm.convert import bytes_to_unicode, convert_gguf
from minilm.formats import Weight
from minilm.default_model import find_default_gguf
from minilm.gguf_file import GGUFError, gguf_config, open_gguf, write_gguf
from minilm.safetensors_file import save
from minilm.testing import tiny_checkpoint, tiny_config
from minilm.tokenizer import Tokenizer
from conftest import load_hf_model

SMOLLM2_IDS = np.array([[1, 504, 3458, 282, 4649, 314, 260, 1345, 30, 2]])


@pytest.fixture(scope="module")
def smollm2_gguf():
    return find_default_gguf()


@pytest.fixture(scope="module")
def smollm2_gguf_hf(smollm2_gguf):
    """transformers loading the same GGUF itself (it dequantizes every tensor to float32 with gguf-py)."""
    from transformers import AutoModelForCausalLM
    import accelerate  # noqa: F401  (transformers needs it to read a GGUF)
    folder, name = os.path.split(smollm2_gguf)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_smollm2_gguf_as_stored_matches_transformers_loading_the_same_file(smollm2_gguf, smollm2_gguf_hf, backend):
    model = minilm.load(smollm2_gguf, backend=backend, mode="exact", progress=False)
    assert model.weights["model.layers.0.mlp.up_proj.weight"].format == "q4_1"
    assert model.weights["lm_head.weight"].format == "q8_0"            # the tied head, as stored
    expected = hf_logits(smollm2_gguf_hf, SMOLLM2_IDS)
    error = np.abs(model(SMOLLM2_IDS).logits - expected).max() / np.abs(expected).max()
    assert error < 1e-4, error


def test_smollm2_gguf_greedy_tokens_equal_transformers(smollm2_gguf, smollm2_gguf_hf):
    model = minilm.load(smollm2_gguf, backend="numba", mode="exact", progress=False)
    ours = model.generate(SMOLLM2_IDS, max_new_tokens=48, eos_token_id=[])
    with torch.no_grad():
        theirs = smollm2_gguf_hf.generate(torch.as_tensor(SMOLLM2_IDS), max_new_tokens=48, min_new_tokens=48,
                                         do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_the_header_parser_agrees_with_gguf_py(smollm2_gguf):
    ours = open_gguf(smollm2_gguf)
    reader = gguf.GGUFReader(smollm2_gguf)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == theirs
    for t in reader.tensors:
        assert ours.tensors[t.name][0] == t.tensor_type.name
        np.testing.assert_array_equal(ours.data(t.name).reshape(-1), np.asarray(t.data).reshape(-1).view(np.uint8))


# --- tiny GGUFs of every family ----------------------------------------------------------------------

FAMILIES = {"llama": {"num_key_value_heads": 2}, "cohere": {"use_qk_norm": True}, "cohere2": {}}


def write_tiny_gguf(family, folder, qtype, overrides, metadata=None, stored=None):
    """A tiny checkpoint's matrices quantized by gguf-py (the independent implementation) into a GGUF
    (minilm's writer lays the file out; llama's q/k rows permuted like llama.cpp's converter does).
    `stored`, a dict, receives {HF name: the float32 values the GGUF holds, as gguf-py decodes them}."""
    checkpoint = tiny_checkpoint(family, os.path.join(folder, "float"), **overrides)
    model = minilm.load(checkpoint, backend="numpy", progress=False)
    tensors = {}
    for name, w in model.weights.items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        is_matrix = isinstance(w, Weight)
        values = w.dequantize() if is_matrix else np.asarray(w, np.float32)
        if is_matrix:
            blocks = gguf_quantize(values, qtype).reshape(values.shape[0], -1)
            tensors[name] = (qtype.name.lower(), values.shape, lambda b=blocks: b)
            values = gguf_dequantize(blocks, qtype).reshape(values.shape)
        else:
            tensors[name] = ("float32", values.shape, lambda v=values: v)
        if stored is not None:
            stored[name] = values
    path = write_gguf(os.path.join(folder, "tiny.gguf"), model.config, tensors, metadata=metadata)
    return path, checkpoint


def dequantized_checkpoint(path, folder, config):
    """The GGUF's weights dequantized by gguf-py, as a float32 safetensors checkpoint transformers loads."""
    reader = gguf.GGUFReader(path)
    tensors = {}
    ours = open_gguf(path)
    from minilm.gguf_file import gguf_tensors, decoded
    for name, tensor in gguf_tensors(ours, parse_config(config)).items():
        tensors[name] = decoded(tensor) if tensor.type_name == "F32" else None
    for name, tensor in gguf_tensors(ours, parse_config(config)).items():
        if tensors[name] is None:
            raw = next(t for t in reader.tensors if t.name == tensor.gguf_name)
            tensors[name] = gguf_dequantize(np.asarray(raw.data), raw.tensor_type).reshape(tensor.shape)
    os.makedirs(folder, exist_ok=True)
    import json
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    save(os.path.join(folder, "model.safetensors"), {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()})
    return folder


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1,
                                   gguf.GGMLQuantizationType.Q8_0])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_gguf_as_stored_matches_transformers(family, qtype, tmp_path):
    path, checkpoint = write_tiny_gguf(family, str(tmp_path), qtype, FAMILIES[family])
    config = gguf_config(open_gguf(path))
    if family == "llama":
        from transformers import AutoModelForCausalLM
        reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf",
                                                         dtype=torch.float32).eval()
    else:   # transformers' GGUF loader knows no command-r / cohere2: the same dequantized weights instead
        reference = load_hf_model(dequantized_checkpoint(path, str(tmp_path / "dequantized"), config))
    ids = np.random.default_rng(0).integers(3, 256, size=(2, 12))
    expected = hf_logits(reference, ids)
    for backend in ("numpy", "numba"):
        model = minilm.load(path, backend=backend, mode="exact", progress=False)
        assert model.weights["model.layers.0.self_attn.q_proj.weight"].format == qtype.name.lower()
        error = np.abs(model(ids).logits - expected).max() / np.abs(expected).max()
        assert error < 1e-4, (backend, error)


def test_negative_control_llama_rows_left_permuted_fail(tmp_path, monkeypatch):
    path, _ = write_tiny_gguf("llama", str(tmp_path), gguf.GGMLQuantizationType.Q8_0, FAMILIES["llama"])
    from transformers import AutoModelForCausalLM
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32)
    ids = np.random.default_rng(0).integers(3, 256, size=(1, 12))
    monkeypatch.setattr("minilm.models.llama.LlamaModel.gguf_permuted_heads", classmethod(lambda cls, c: {}))
    model = minilm.load(path, backend="numpy", progress=False)
    expected = hf_logits(reference.eval(), ids)
    assert np.abs(model(ids).logits - expected).max() / np.abs(expected).max() > 1e-2


def test_broken_gguf_files_name_what_is_wrong(tmp_path, smollm2_gguf):
    data = open(smollm2_gguf, "rb").read()
    cases = {"magic": b"GGML" + data[4:], "truncated header": data[:5000], "truncated data": data[:len(data) // 2],
             "huge count": data[:16] + (10**15).to_bytes(8, "little") + data[24:]}
    patterns = {"magic": "not a GGUF file", "truncated header": "(truncated|corrupt) GGUF header",
                "truncated data": "truncated file: tensor", "huge count": "cannot fit in the file"}
    for case, content in cases.items():
        path = tmp_path / f"{case.replace(' ', '_')}.gguf"
        path.write_bytes(content)
        with pytest.raises(GGUFError, match=patterns[case]):
            minilm.load(str(path), progress=False)


# --- minilm convert of the non-llama families ---------------------------------------------------------

BYTE_LEVEL_VOCAB = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",   # 256 tokens, one per byte
                    "tokenizer.ggml.tokens": [bytes_to_unicode()[b] for b in range(256)],
                    "tokenizer.ggml.token_type": [1] * 256, "tokenizer.ggml.add_bos_token": True}


@pytest.mark.parametrize("family,qtype", [("cohere", gguf.GGMLQuantizationType.Q4_1),
                                          ("cohere2", gguf.GGMLQuantizationType.Q8_0)])
def test_converted_gguf_matches_transformers(family, qtype, tmp_path):
    """`minilm convert` of a command-r / cohere2 GGUF: transformers running the converted folder gives
    the logits transformers gives on the tiny checkpoint's own config.json with the weights the GGUF
    holds (decoded by gguf-py, before the file was written): names, config and layout all survive."""
    stored = {}
    path, checkpoint = write_tiny_gguf(family, str(tmp_path), qtype, FAMILIES[family], BYTE_LEVEL_VOCAB, stored)
    reference_dir = tmp_path / "reference"
    os.makedirs(reference_dir)
    shutil.copy(os.path.join(checkpoint, "config.json"), reference_dir)
    save(str(reference_dir / "model.safetensors"), stored)
    out = convert_gguf(path, str(tmp_path / "converted"), progress=False)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["architectures"] == tiny_config(family)["architectures"] and config["model_type"] == family
    ids = np.random.default_rng(0).integers(3, 256, size=(2, 12))
    expected = hf_logits(load_hf_model(reference_dir), ids)
    ours = hf_logits(load_hf_model(out), ids)
    assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-4
    tok = Tokenizer.from_pretrained(out)
    assert tok.encode("hé") == [5, *b"h\xc3\xa9"] and tok.decode(tok.encode("hé"), skip_special_tokens=True) == "hé"
