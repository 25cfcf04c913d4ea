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
interrupted conversion never leaves a folder that looks complete. SIGTERM unwinds like
Ctrl-C (the staging folder is removed, then the process dies of SIGTERM as before), and
staging folders of processes that died without unwinding (SIGKILL, power loss) are removed
by the next conversion into the same place. An existing folder is replaced only if minilm
made it (it holds the completion marker): `overwrite=True` never deletes a user's folder.

Untrusted input is checked before it is trusted: the GGUF header is walked once with every
count checked against the bytes left in the file (the `gguf` reader itself would loop for
ever on an array that claims 2**60 elements), the metadata must make a valid config, and the
tensors must be exactly those the config implies (a `block_count` larger than the tensors
present fails the conversion rather than producing a folder that can never load).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import secrets
import shutil
import signal
import struct
import threading
import time

import numpy as np

from .config import ConfigError, parse_config
from .errors import is_rust_panic, regular_file_size
from .models import LlamaModel
from .progress import progress_bar
from .safetensors_file import SafetensorsWriter

SUPPORTED_ARCHITECTURES = ("llama",)
CONVERTER_VERSION = 3  # 2: the marker holds file sizes, digests and the GGUF identity; 3: generation_config.json carries the model card's sampling
MARKER_FILE = "minilm-conversion.json"  # written last, inside the folder that gets renamed into place
MARKED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json")
GGUF_MAGIC = b"GGUF"
DIGEST_BLOCK = 1 << 16         # digests hash the first and last 64 KiB (usually a whole safetensors header)
STALE_AFTER_S = 60             # a dead process's staging folder untouched this long is removed


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
    """Convert a Llama GGUF into an HF folder at `out_dir` (float32 safetensors); returns out_dir.

    overwrite=True replaces an earlier conversion (a folder holding minilm's marker); any other
    existing path is refused, never deleted.
    """
    reader = open_gguf(gguf_path)
    metadata = read_metadata(reader, gguf_path)
    check_architecture(metadata, gguf_path)
    with _untrusted_metadata(gguf_path, "tensors"):
        plan = plan_tensors(reader, metadata, gguf_path)  # validates names and quantization types first
        config = llama_config(metadata, [t.name for t in reader.tensors])
    check_tensors_complete(plan, config, gguf_path)
    with _untrusted_metadata(gguf_path, "tokenizer"):
        tokenizer = build_tokenizer(metadata, gguf_path)

    out_dir = os.path.abspath(os.fspath(out_dir))
    check_replaceable(out_dir, overwrite)
    remove_stale_siblings(out_dir)
    try:
        with _sigterm_unwinds(), _staging_dir(out_dir) as staging:
            _write_json(os.path.join(staging, "config.json"), config)
            _write_json(os.path.join(staging, "generation_config.json"), generation_config(config, gguf_path))
            write_tokenizer_files(tokenizer, metadata, staging)
            with progress_bar(len(plan), f"converting {os.path.basename(gguf_path)}", enabled=progress) as bar:
                write_safetensors(os.path.join(staging, "model.safetensors"), plan, config, on_tensor=bar.update)
            _write_json(os.path.join(staging, MARKER_FILE), conversion_marker(gguf_path, len(plan), staging))
            _move_into_place(staging, out_dir)
    except OSError as e:  # a full disk, a file-size limit, no permission: name the folder
        raise ConversionError(f"{out_dir}: writing the conversion failed ({e.strerror or e})") from None
    return out_dir


def check_replaceable(out_dir: str, overwrite: bool) -> None:
    """An existing out_dir may be replaced only when asked to and only if minilm made it."""
    if not os.path.lexists(out_dir):
        return
    if not is_minilm_folder(out_dir):
        raise ConversionError(f"{out_dir} already exists and is not a minilm conversion (no {MARKER_FILE}); "
                              "refusing to replace it: choose another output folder or remove it yourself")
    if not overwrite:
        raise ConversionError(f"{out_dir} already exists (pass --overwrite, or overwrite=True, to replace "
                              "the earlier conversion)")


def is_minilm_folder(folder: str) -> bool:
    """True if `folder` is a directory minilm wrote: only conversions hold an entry named like
    the marker (even a damaged marker, which is why its type and content are not required)."""
    return os.path.isdir(folder) and os.path.lexists(os.path.join(folder, MARKER_FILE))


def convert_gguf_tokenizer(gguf_path: str, out_dir: str) -> str:
    """Only tokenizer.json + tokenizer_config.json (seconds instead of a full conversion)."""
    _, metadata = read_gguf(gguf_path)
    check_architecture(metadata, gguf_path)
    with _untrusted_metadata(gguf_path, "tokenizer"):
        tokenizer = build_tokenizer(metadata, gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    write_tokenizer_files(tokenizer, metadata, out_dir)
    return out_dir


def conversion_marker(gguf_path: str, n_tensors: int, folder: str) -> dict:
    """The completion marker: what was converted (the GGUF's identity) and proof of what was
    written (size and digest of every file), which `minilm.default_model` checks on reuse."""
    return {"converter": "minilm.convert", "converter_version": CONVERTER_VERSION,
            "source_file": os.path.basename(gguf_path), "source": gguf_identity(gguf_path), "tensors": n_tensors,
            "files": {name: file_digest(os.path.join(folder, name)) for name in MARKED_FILES}}


def file_digest(path: str) -> dict:
    """{"size", "sha256"} of a file, the hash over its size, first and last DIGEST_BLOCK bytes:
    a few milliseconds even for a 30 GB file, and any truncation or rewrite of a header shows."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(f.read(DIGEST_BLOCK))
        if size > DIGEST_BLOCK:
            f.seek(max(DIGEST_BLOCK, size - DIGEST_BLOCK))
            digest.update(f.read(DIGEST_BLOCK))
    return {"size": size, "sha256": digest.hexdigest()}


def gguf_identity(gguf_path: str) -> dict:
    """Which GGUF this is, independent of its path and name: size, modification time and
    file_digest. Two paths to the same file share it; a changed or replaced file does not."""
    return {"mtime_ns": os.stat(gguf_path).st_mtime_ns, **file_digest(gguf_path)}


# ---------------------------------------------------------------------- reading the GGUF


def open_gguf(gguf_path: str):
    """A gguf.GGUFReader, after checking the file is a regular file with the GGUF magic and a
    header whose counts fit in the file (so the reader's work is bounded by the file's size)."""
    import gguf  # imported lazily: only conversion needs it

    gguf_path = os.fspath(gguf_path)
    if not os.path.lexists(gguf_path):
        raise GGUFNotFoundError(f"{gguf_path}: file not found")
    regular_file_size(gguf_path, "GGUF file", NotAGGUFError)
    with open(gguf_path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise NotAGGUFError(f"{gguf_path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    check_gguf_header(gguf_path)
    try:
        return gguf.GGUFReader(gguf_path)
    except Exception as e:
        raise NotAGGUFError(f"{gguf_path}: unreadable GGUF ({type(e).__name__}: {_first_line(e)})") from None


def read_metadata(reader, gguf_path: str = "GGUF") -> dict:
    """{key: python value} for every metadata field (arrays become lists)."""
    metadata = {}
    for key, field in reader.fields.items():
        try:
            metadata[key] = field.contents()
        except Exception as e:  # the gguf package raises whatever its parsing hits
            raise NotAGGUFError(f"{gguf_path}: unreadable metadata value {key!r} ({type(e).__name__})") from None
    return metadata


def read_gguf(gguf_path: str) -> tuple:
    """(reader, metadata) of a GGUF, or a ConversionError naming the file: never another exception."""
    reader = open_gguf(gguf_path)
    return reader, read_metadata(reader, gguf_path)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:200]


@contextlib.contextmanager
def _untrusted_metadata(gguf_path: str, what: str):
    """Metadata values of the wrong type (a string where a count belongs, ...) surface as arbitrary
    Python errors, or as Rust panics in `tokenizers`: each becomes one UnsupportedGGUFError."""
    try:
        yield
    except ConversionError as e:
        if not str(e).startswith(gguf_path):      # errors raised without the file name get it here
            raise type(e)(f"{gguf_path}: {e}") from None
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise UnsupportedGGUFError(f"{gguf_path}: malformed {what} metadata ({type(e).__name__}: "
                                   f"{_first_line(e)})") from None
    except BaseException as e:
        if is_rust_panic(e):
            raise UnsupportedGGUFError(f"{gguf_path}: malformed {what} metadata (tokenizers failed: "
                                       f"{_first_line(e)})") from None
        raise


# ---------------------------------------------------------------------- the GGUF header, walked once

# GGUF value types: scalar sizes in bytes; 8 is a string (u64 length + bytes), 9 an array.
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_DIMS = 4            # GGML_MAX_DIMS
_GGUF_MAX_NESTING = 8


class _HeaderWalk:
    """A cursor over the GGUF header that refuses any length or count the file cannot hold."""

    def __init__(self, data, path: str):
        self.data, self.path, self.pos = data, path, 0
        version = int.from_bytes(data[4:8], "little") if len(data) >= 8 else 0
        self.order = ">" if version and version & 0xFFFF == 0 else "<"   # big-endian files exist

    def fail(self, problem: str):
        raise NotAGGUFError(f"{self.path}: corrupt GGUF header ({problem} at byte {self.pos})")

    def skip(self, n: int, what: str) -> int:
        if n > len(self.data) - self.pos:
            self.fail(f"{what} of {n} bytes runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def unsigned(self, size: int, what: str) -> int:
        start = self.skip(size, what)
        return struct.unpack_from(self.order + ("I" if size == 4 else "Q"), self.data, start)[0]

    def string(self, what: str) -> bytes:
        n = self.unsigned(8, f"{what} length")
        start = self.skip(n, what)
        return self.data[start:start + n]

    def count(self, n: int, min_bytes: int, what: str) -> int:
        """A count of items of at least min_bytes each: it cannot exceed what is left."""
        if n * min_bytes > len(self.data) - self.pos:
            self.fail(f"{what} count {n} is more than the file can hold")
        return n

    def value(self, kind: int, key: str, depth: int = 0) -> None:
        if kind in _GGUF_SCALAR_SIZES:
            self.skip(_GGUF_SCALAR_SIZES[kind], f"value of {key!r}")
        elif kind == _GGUF_STRING:
            self.string(f"string value of {key!r}")
        elif kind == _GGUF_ARRAY and depth < _GGUF_MAX_NESTING:
            item = self.unsigned(4, f"array type of {key!r}")
            n = self.unsigned(8, f"array length of {key!r}")
            if item in _GGUF_SCALAR_SIZES:
                self.skip(self.count(n, _GGUF_SCALAR_SIZES[item], f"array {key!r}") * _GGUF_SCALAR_SIZES[item],
                          f"array {key!r}")
            else:
                for _ in range(self.count(n, 8, f"array {key!r}")):      # strings and arrays: 8+ bytes each
                    self.value(item, key, depth + 1)
        else:
            self.fail(f"unknown value type {kind} of {key!r}")


def check_gguf_header(gguf_path: str) -> None:
    """Walk the metadata and tensor table once, in time proportional to the file's size."""
    with open(gguf_path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise NotAGGUFError(f"{gguf_path}: truncated GGUF (no header)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            walk = _HeaderWalk(data, gguf_path)
            walk.skip(8, "magic and version")
            n_tensors = walk.unsigned(8, "tensor count")
            n_keys = walk.unsigned(8, "metadata count")
            for _ in range(walk.count(n_keys, 12, "metadata")):        # key length + type: 12+ bytes each
                key = walk.string("metadata key").decode("utf-8", "replace")
                walk.value(walk.unsigned(4, f"type of {key!r}"), key)
            for _ in range(walk.count(n_tensors, 24, "tensor")):       # name length, dims, type, offset
                name = walk.string("tensor name").decode("utf-8", "replace")
                n_dims = walk.unsigned(4, f"dimension count of {name!r}")
                if n_dims > _GGUF_MAX_DIMS:
                    walk.fail(f"tensor {name!r} has {n_dims} dimensions (at most {_GGUF_MAX_DIMS})")
                walk.skip(8 * n_dims + 12, f"shape, type and offset of {name!r}")


def check_tensors_complete(plan: list, config: dict, gguf_path: str) -> None:
    """The tensors must be exactly those the metadata implies, or the folder could never load.
    The block count is compared with the blocks present before any per-layer table is built."""
    blocks = {m[1] for p in plan if (m := _LAYER_TENSOR.fullmatch(p.gguf_tensor.name))}
    layers = config["num_hidden_layers"]
    if isinstance(layers, int) and layers > len(blocks):
        raise UnsupportedGGUFError(f"{gguf_path}: llama.block_count={layers} but the file holds tensors for "
                                   f"{len(blocks)} blocks")
    try:
        parsed = parse_config(config, source=f"{gguf_path}: metadata")
    except ConfigError as e:
        raise UnsupportedGGUFError(str(e)) from None
    expected = LlamaModel.tensor_specs(parsed)
    if parsed.tie_word_embeddings:
        expected.pop("lm_head.weight")
    present = {}
    for p in plan:
        if p.hf_name in present:
            raise UnsupportedGGUFError(f"{gguf_path}: tensor {p.gguf_tensor.name!r} appears twice")
        present[p.hf_name] = p
    for name, spec in expected.items():
        if name not in present:
            raise UnsupportedGGUFError(f"{gguf_path}: lacks tensor {gguf_tensor_name(name)!r} ({name}, shape "
                                       f"{list(spec.shape)}) that its metadata implies")
        if present[name].shape != spec.shape:
            raise UnsupportedGGUFError(f"{gguf_path}: tensor {present[name].gguf_tensor.name!r} has shape "
                                       f"{list(present[name].shape)}, the metadata implies {list(spec.shape)}")
    extra = [p.gguf_tensor.name for p in plan if p.hf_name not in expected]
    if extra:
        raise UnsupportedGGUFError(f"{gguf_path}: tensor {extra[0]!r} does not belong to a {layers}-block model")


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


def gguf_tensor_name(hf_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (the inverse of hf_tensor_name)."""
    reverse = {hf: gguf for gguf, hf in {**GLOBAL_TENSOR_NAMES, **LAYER_TENSOR_NAMES}.items()}
    module, suffix = hf_name.rsplit(".", 1)
    if module.startswith("model.layers."):
        _, _, layer, rest = module.split(".", 3)
        return f"blk.{layer}.{reverse[rest]}.{suffix}"
    return f"{reverse[module]}.{suffix}"


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


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread was, so `with` blocks unwind."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM during the block cleans up like Ctrl-C, then the process dies of SIGTERM as it would
    have. Only where Python lets us (the main thread) and only over the default action: an
    application's own SIGTERM handler is left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def unwind(signum, frame):
        raise _Terminated
    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)          # the exit status says "killed by SIGTERM"
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _move_into_place(staging: str, out_dir: str) -> None:
    if not os.path.lexists(out_dir):
        os.rename(staging, out_dir)
        return
    # Replace: move the old folder aside first, since rename() cannot replace a non-empty dir.
    old = _unique_sibling(out_dir, "old")
    os.rename(out_dir, old)
    os.rename(staging, out_dir)
    _remove(old)


def _remove(path: str) -> None:
    """A folder we own, or a symlink to one (the link goes, its target stays)."""
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _unique_sibling(path: str, tag: str) -> str:
    """A hidden name next to `path`, e.g. `.smollm2.partial-1234-9f3a0c1e`."""
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_siblings(out_dir: str) -> list[str]:
    """Remove the staging (`.partial-`) and replaced (`.old-`) siblings of `out_dir` that a killed
    process left behind: its PID no longer runs here and nothing in it changed for STALE_AFTER_S
    (the second test keeps a live conversion in another PID namespace safe). Returns what went."""
    parent, name = os.path.split(out_dir)
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:partial|old)-(\d+)-[0-9a-f]{{8}}")
    try:
        entries = os.listdir(parent or ".")
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry)
        path = os.path.join(parent, entry)
        if match and not _process_alive(int(match[1])) and _quiet_for(path, STALE_AFTER_S):
            _remove(path)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # it exists but belongs to someone else
        return True
    return True


def _quiet_for(path: str, seconds: float) -> bool:
    """Nothing in `path` (one level deep: a conversion writes flat files) changed for `seconds`."""
    try:
        times = [os.lstat(path).st_mtime]
        if os.path.isdir(path) and not os.path.islink(path):
            times += [os.lstat(os.path.join(path, n)).st_mtime for n in os.listdir(path)]
    except OSError:
        return False
    return time.time() - max(times) > seconds
