"""Convert a Llama-architecture GGUF (llama.cpp's format) into a Hugging Face checkpoint folder.

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2/")

writes

    config.json              LlamaForCausalLM hyperparameters from the GGUF metadata
    generation_config.json   bos / eos / pad ids (+ the model card's sampling settings, for models listed
                             in CARD_SAMPLING)
    model.safetensors        every tensor dequantized to float32, under its HF name
    tokenizer.json           byte-level BPE rebuilt from the GGUF vocab and merges
    tokenizer_config.json    special tokens and the chat template
    minilm-conversion.json   what was converted, by which converter version

Two llama.cpp conventions are undone (both exactly as transformers' own GGUF loader does,
so the result equals `AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`):

1. q_proj / k_proj rows. llama.cpp's RoPE rotates adjacent pairs (2i, 2i+1) of each head,
   while HF Llama rotates (i, i + d/2). llama.cpp's converter therefore permutes the rows of
   every head of q_proj and k_proj from [first half; second half] to interleaved order.
   `unpermute_rope_rows` puts them back; without it attention scores are wrong.
2. Tokens. Tokens outside the byte-level alphabet are respelled in it, control tokens become
   special added tokens, and the pre-tokenizer is picked from `tokenizer.ggml.pre`.

The folder is written under a temporary sibling name and renamed at the end, so an
interrupted conversion never leaves a folder that looks complete.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil

import numpy as np

from .progress import progress_bar
from .safetensors_file import SafetensorsWriter

SUPPORTED_ARCHITECTURES = ("llama",)
CONVERTER_VERSION = 2  # 2: generation_config.json carries the model card's sampling settings
MARKER_FILE = "minilm-conversion.json"  # written last, inside the folder that gets renamed into place
GGUF_MAGIC = b"GGUF"


class ConversionError(ValueError):
    """A GGUF that minilm cannot convert (one-line message)."""


class GGUFNotFoundError(ConversionError, FileNotFoundError):
    pass


class NotAGGUFError(ConversionError):
    pass


class UnsupportedGGUFError(ConversionError):
    """Valid GGUF, but an architecture, tensor, quantization or tokenizer we do not handle."""


# ---------------------------------------------------------------------- public API


def convert_gguf(gguf_path: str, out_dir: str, progress: bool = True, overwrite: bool = False) -> str:
    """Convert a Llama GGUF into an HF folder at `out_dir` (float32 safetensors); returns out_dir."""
    reader = open_gguf(gguf_path)
    metadata = read_metadata(reader)
    check_architecture(metadata, gguf_path)
    plan = plan_tensors(reader, metadata, gguf_path)  # validates names and quantization types first
    config = llama_config(metadata, [t.name for t in reader.tensors])
    tokenizer = build_tokenizer(metadata, gguf_path)

    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise ConversionError(f"{out_dir} already exists (pass overwrite=True to replace it)")
    with _staging_dir(out_dir) as staging:
        _write_json(os.path.join(staging, "config.json"), config)
        _write_json(os.path.join(staging, "generation_config.json"), generation_config(config, gguf_path))
        write_tokenizer_files(tokenizer, metadata, staging)
        with progress_bar(len(plan), f"converting {os.path.basename(gguf_path)}", enabled=progress) as bar:
            write_safetensors(os.path.join(staging, "model.safetensors"), plan, config, on_tensor=bar.update)
        _write_json(os.path.join(staging, MARKER_FILE), conversion_marker(gguf_path, len(plan)))
        _move_into_place(staging, out_dir)
    return out_dir


def convert_gguf_tokenizer(gguf_path: str, out_dir: str) -> str:
    """Only tokenizer.json + tokenizer_config.json (seconds instead of a full conversion)."""
    metadata = read_metadata(open_gguf(gguf_path))
    check_architecture(metadata, gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    write_tokenizer_files(build_tokenizer(metadata, gguf_path), metadata, out_dir)
    return out_dir


def conversion_marker(gguf_path: str, n_tensors: int) -> dict:
    """The completion marker's content; `minilm.default_model` compares it on reuse."""
    return {"converter": "minilm.convert", "converter_version": CONVERTER_VERSION,
            "source_file": os.path.basename(gguf_path), "source_size": os.path.getsize(gguf_path),
            "tensors": n_tensors}


# ---------------------------------------------------------------------- reading the GGUF


def open_gguf(gguf_path: str):
    """A gguf.GGUFReader, after checking the file exists and starts with the GGUF magic."""
    import gguf  # imported lazily: only conversion needs it

    gguf_path = os.fspath(gguf_path)
    if not os.path.isfile(gguf_path):
        raise GGUFNotFoundError(f"{gguf_path}: file not found")
    with open(gguf_path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise NotAGGUFError(f"{gguf_path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        return gguf.GGUFReader(gguf_path)
    except Exception as e:
        raise NotAGGUFError(f"{gguf_path}: unreadable GGUF ({type(e).__name__}: {e})") from None


def read_metadata(reader) -> dict:
    """{key: python value} for every metadata field (arrays become lists)."""
    return {key: field.contents() for key, field in reader.fields.items()}


def check_architecture(metadata: dict, gguf_path: str) -> None:
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedGGUFError(f"{gguf_path}: unsupported architecture {arch!r} "
                                   f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")


# ---------------------------------------------------------------------- config


def llama_config(metadata: dict, tensor_names: list[str]) -> dict:
    """HF LlamaConfig fields from llama.cpp's `llama.*` and `tokenizer.ggml.*` keys."""
    key = _metadata_getter(metadata, "llama")
    hidden, heads = key("embedding_length"), key("attention.head_count")
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": key("attention.key_length", None) or key("rope.dimension_count", None) or hidden // heads,
        "max_position_embeddings": key("context_length"),
        "rms_norm_eps": _float32_value(key("attention.layer_norm_rms_epsilon")),
        "rope_parameters": _rope_parameters(key),
        "vocab_size": key("vocab_size", None) or len(tokens),
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": "blk.0.ffn_up.bias" in tensor_names,
        # llama.cpp writes output.weight only when the LM head is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
        "dtype": "float32",
    }
    return config


# A GGUF carries no sampling settings; for the default model (by file name, before the quantization suffix)
# they are the ones its model card samples with: HuggingFaceTB/SmolLM2-135M-Instruct's card calls
# model.generate(..., temperature=0.2, top_p=0.9, do_sample=True).
CARD_SAMPLING = {"SmolLM2-135M-Instruct": {"do_sample": True, "temperature": 0.2, "top_p": 0.9}}


def generation_config(config: dict, gguf_path: str = "") -> dict:
    """generation_config.json: bos / eos / pad ids, and the model card's sampling settings if known."""
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    model_name = os.path.basename(gguf_path).split(".")[0]
    return {**ids, **CARD_SAMPLING.get(model_name, {})}


def _metadata_getter(metadata: dict, prefix: str):
    missing = object()

    def key(name, default=missing):
        full = f"{prefix}.{name}"
        if full in metadata:
            return metadata[full]
        if default is missing:
            raise UnsupportedGGUFError(f"GGUF metadata lacks required key {full!r}")
        return default
    return key


def _float32_value(value: float) -> float:
    # GGUF stores float32: 1e-5 arrives as 9.999999747378752e-06. Its shortest float32
    # spelling (1e-05) is what the original config said and is the same float32 number.
    return float(str(np.float32(value)))


def _rope_parameters(key) -> dict:
    theta = _float32_value(key("rope.freq_base", 10000.0))
    scaling = key("rope.scaling.type", "none")
    if scaling == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if scaling == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": _float32_value(key("rope.scaling.factor"))}
    raise UnsupportedGGUFError(f"unsupported RoPE scaling {scaling!r} (supported: none, linear)")


# ---------------------------------------------------------------------- tensors

# llama.cpp tensor name -> HF name. Per-layer names are `blk.{i}.<name>.weight|bias`.
GLOBAL_TENSOR_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_TENSOR = re.compile(r"(\w+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if gguf_name == "rope_freqs.weight":
        raise UnsupportedGGUFError("tensor 'rope_freqs.weight' (Llama 3.1-style scaled RoPE) is not supported")
    if (m := _LAYER_TENSOR.fullmatch(gguf_name)) and m[2] in LAYER_TENSOR_NAMES:
        return f"model.layers.{m[1]}.{LAYER_TENSOR_NAMES[m[2]]}.{m[3]}"
    if (m := _GLOBAL_TENSOR.fullmatch(gguf_name)) and m[1] in GLOBAL_TENSOR_NAMES:
        return f"{GLOBAL_TENSOR_NAMES[m[1]]}.{m[2]}"
    raise UnsupportedGGUFError(f"tensor {gguf_name!r} has no Llama equivalent")


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its `permute`; transformers' `reverse_permute_weights`).

    Within each head llama.cpp stores rows as [r0, r_{d/2}, r1, r_{d/2+1}, ...] so its
    adjacent-pair RoPE sees the pairs HF rotates; we restore [r0 .. r_{d/2-1}, r_{d/2} .. r_{d-1}].
    """
    half = weight.shape[0] // n_heads // 2
    rows = weight.reshape(n_heads, half, 2, *weight.shape[1:])  # [H*d, ...] -> [H, d/2, 2, ...]
    return rows.swapaxes(1, 2).reshape(weight.shape)  # -> [H, 2, d/2, ...] -> [H*d, ...]


class TensorPlan:
    """One output tensor: where it comes from and its final float32 shape."""

    def __init__(self, gguf_tensor, hf_name: str, shape: tuple[int, ...], rope_heads: int | None):
        self.gguf_tensor = gguf_tensor
        self.hf_name = hf_name
        self.shape = shape
        self.rope_heads = rope_heads  # set for q/k projections, which need un-permuting

    def load(self) -> np.ndarray:
        from gguf.quants import dequantize

        # np.asarray drops the np.memmap subclass (no copy), whose per-slice bookkeeping
        # would otherwise double the dequantization time.
        raw = np.asarray(self.gguf_tensor.data)
        array = dequantize(raw, self.gguf_tensor.tensor_type).reshape(self.shape)
        if self.rope_heads is not None:
            array = unpermute_rope_rows(array, self.rope_heads)
        return np.ascontiguousarray(array, dtype=np.float32)


def plan_tensors(reader, metadata: dict, gguf_path: str = "") -> list[TensorPlan]:
    """Map, shape-check and quantization-check every tensor before anything is written."""
    key = _metadata_getter(metadata, "llama")
    heads = key("attention.head_count")
    rope_heads = {"q_proj": heads, "k_proj": key("attention.head_count_kv", heads)}
    plan = []
    for tensor in reader.tensors:
        hf_name = hf_tensor_name(tensor.name)
        _check_quantization(tensor, gguf_path)
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dims fastest-first
        projection = hf_name.split(".")[-2]
        n_heads = rope_heads.get(projection)
        if n_heads is not None and shape[0] % (2 * n_heads):
            raise UnsupportedGGUFError(f"{gguf_path}: {tensor.name} has {shape[0]} rows, "
                                       f"not divisible into {n_heads} heads of even size")
        plan.append(TensorPlan(tensor, hf_name, shape, n_heads))
    return sorted(plan, key=lambda p: _natural_key(p.hf_name))


def _check_quantization(tensor, gguf_path: str) -> None:
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    qtype = tensor.tensor_type
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    try:  # the public way to ask gguf-py whether it can dequantize a type: try one zero block
        dequantize(np.zeros(block_bytes, dtype=np.uint8), qtype)
    except NotImplementedError:
        raise UnsupportedGGUFError(f"{gguf_path}: tensor {tensor.name!r} has unsupported "
                                   f"quantization type {qtype.name}") from None


def _natural_key(name: str):
    # model.layers.2 sorts before model.layers.10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# ---------------------------------------------------------------------- safetensors


def write_safetensors(path: str, plan: list[TensorPlan], config: dict, on_tensor=None) -> None:
    """Stream float32 tensors into a .safetensors file, one tensor in memory at a time.
    A tied LM head is left out, like transformers' save_pretrained does."""
    if config.get("tie_word_embeddings"):
        plan = [p for p in plan if p.hf_name != "lm_head.weight"]
    with SafetensorsWriter(path, {p.hf_name: ("F32", p.shape) for p in plan}) as out:
        for p in plan:
            out.write(p.hf_name, p.load())
            if on_tensor:
                on_tensor(1)


# ---------------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


# Pre-tokenizer split regexes by `tokenizer.ggml.pre` (from transformers 5.23's GGUF loader).
# Types not listed (e.g. SmolLM2's "smollm") use the GPT-2 regex built into ByteLevel.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"], _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
}
CONTROL_TOKEN_TYPE, USER_DEFINED_TOKEN_TYPE = 3, 4  # llama.cpp's token types


def build_tokenizer(metadata: dict, gguf_path: str = ""):
    """A `tokenizers.Tokenizer` equal to what transformers builds from the same GGUF."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedGGUFError(f"{gguf_path}: unsupported tokenizer model {model!r} "
                                   "(supported: 'gpt2', byte-level BPE)")
    tokens = metadata["tokenizer.ggml.tokens"]
    token_types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    byte_chars = bytes_to_unicode()
    alphabet = set(byte_chars.values())

    def spelled(token: str) -> str:  # a token written in raw UTF-8 gets the byte-level spelling
        return token if set(token) <= alphabet else "".join(byte_chars[b] for b in token.encode("utf-8"))

    vocab = {spelled(token): index for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ")) for merge in metadata.get("tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(metadata.get("tokenizer.ggml.pre"))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|> ...) match whole and count as special. One spelled outside
    # the byte alphabet is a llama.cpp mislabel; transformers skips those, so do we.
    control = [AddedToken(token, normalized=False, special=True)
               for token, kind in zip(tokens, token_types)
               if kind == CONTROL_TOKEN_TYPE and set(token) <= alphabet]
    tokenizer.add_special_tokens(control)
    known = tokenizer.get_vocab()
    user_defined = [AddedToken(token, normalized=False, special=False)
                    for token, kind in zip(tokens, token_types)
                    if kind == USER_DEFINED_TOKEN_TYPE and token in known]
    tokenizer.add_tokens(user_defined)
    named = _special_token_strings(metadata)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in named.values()])
    tokenizer.post_processor = _bos_eos_post_processor(metadata, named, tokenizer)
    return tokenizer


def _special_token_strings(metadata: dict) -> dict[str, str]:
    """{"bos_token": "<|im_start|>", ...} from the GGUF's special token ids."""
    tokens = metadata["tokenizer.ggml.tokens"]
    ids = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
           "pad_token": "padding_token_id"}
    named = {}
    for name, key in ids.items():
        index = metadata.get(f"tokenizer.ggml.{key}")
        if index is not None and 0 <= index < len(tokens):
            named[name] = tokens[index]
    return named


def _bos_eos_post_processor(metadata: dict, named: dict, tokenizer):
    # tokenizer.json's post-processor decides whether encode() adds BOS/EOS (transformers 5
    # ignores add_bos_token in tokenizer_config.json when tokenizer.json has one).
    from tokenizers import processors

    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and "bos_token" in named
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and "eos_token" in named
    bos, eos = named.get("bos_token"), named.get("eos_token")
    single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
    pair = " ".join([single] + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else []))
    special = [(t, tokenizer.token_to_id(t)) for t, wanted in ((bos, add_bos), (eos, add_eos)) if wanted]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_config(metadata: dict) -> dict:
    config = {
        # PreTrainedTokenizerFast loads tokenizer.json as-is in transformers 4.x and 5.x.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_token_strings(metadata),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": metadata.get("llama.context_length"),
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return {k: v for k, v in config.items() if v is not None}


def write_tokenizer_files(tokenizer, metadata: dict, out_dir: str) -> None:
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config(metadata))


# ---------------------------------------------------------------------- files


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


class _staging_dir:
    """A temporary sibling of `out_dir` (same filesystem, so the final rename is atomic),
    removed again if anything fails before it is moved into place."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def __enter__(self) -> str:
        self.path = _unique_sibling(self.out_dir, "partial")
        os.makedirs(self.path)  # plain mkdir (not mkdtemp's 0700) so the result has normal permissions
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # no-op after a successful move


def _move_into_place(staging: str, out_dir: str) -> None:
    if not os.path.exists(out_dir):
        os.rename(staging, out_dir)
        return
    # Replace: move the old folder aside first, since rename() cannot replace a non-empty dir.
    old = _unique_sibling(out_dir, "old")
    os.rename(out_dir, old)
    os.rename(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _unique_sibling(path: str, tag: str) -> str:
    """A hidden name next to `path`, e.g. `.smollm2.partial-1234-9f3a0c1e`."""
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")
