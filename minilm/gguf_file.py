"""GGUF files (llama.cpp's format) read as they are stored: config, tensors and quantized blocks.

    config = gguf_config(reader)                        # the HF config.json dict the metadata describes
    tensors = gguf_tensors(reader, parse_config(config)) # {HF name: GGUFTensor}, checked against the family

A GGUF holds metadata (`{arch}.embedding_length`, `tokenizer.ggml.tokens`, ...)
and tensors under llama.cpp's names (`blk.3.attn_q.weight`); gguf-py, the
library that comes with llama.cpp, reads both and knows each architecture's
name map. The families minilm runs, with their llama.cpp architecture names:

    llama     "llama"      q_proj / k_proj rows permuted by llama.cpp's converter (undone here)
    cohere    "command-r"  interleaved RoPE already matches llama.cpp's: no permutation
    cohere2   "cohere2"    sliding window in `cohere2.attention.sliding_window`; every 4th layer global

Q8_0, Q4_0 and Q4_1 tensors become `formats.Weight`s whose blocks are a view of
the file (no copy; a memory map). F32 and BF16 matrices are used as stored too.
Other types (F16, the K-quants, ...) have no native kernel: they are decoded by
gguf-py, exactly, and stored as float32 (F16) or re-quantized to q8_0
(K-quants: 8 bits per weight hold more than their 2-6), with a notice.
"""
from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

from .errors import WeightsError
from .formats import Weight, quantize
from .models import FAMILIES
from .models.base import shortest_float32

GGUF_MAGIC = b"GGUF"
NATIVE_BLOCKS = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}   # GGUF type -> Weight format, as stored
SCALE_BYTES = {"Q8_0": 2, "Q4_0": 2, "Q4_1": 4}   # each block starts with its fp16 scale d (Q4_1: and min m)


class GGUFError(WeightsError):
    """A GGUF file minilm cannot read or run: names the file and the key or tensor."""


def gguf_architectures() -> tuple[str, ...]:
    """The llama.cpp architecture names of the registered families: ("llama", "command-r", "cohere2")."""
    return tuple(f.gguf_architecture for f in FAMILIES.values() if getattr(f, "gguf_architecture", None))


def family_for_architecture(arch) -> type:
    for family in FAMILIES.values():
        if getattr(family, "gguf_architecture", None) == arch:
            return family
    raise GGUFError(f"unsupported GGUF architecture {arch!r} (supported: {', '.join(gguf_architectures())})")


class GGUFFile:
    """A GGUF file's metadata and tensor table, parsed by hand; tensor data stays in the file.

    Why not gguf-py's GGUFReader (used elsewhere for its type tables and name maps): it builds a
    NumPy view for every element of every array, so SmolLM2's 49,152-token vocabulary takes it
    10-15 s to parse where this loop takes a fraction of a second. Every count and offset is
    checked against the file's size before it is used.

        u32 magic "GGUF" | u32 version | u64 tensor count | u64 metadata count
        metadata: string key | u32 type | value          (type 9: u32 item type, u64 count, items)
        tensors:  string name | u32 dims | u64 dims[..] (fastest first) | u32 ggml type | u64 offset
        data:     aligned to general.alignment (32), each tensor at data start + offset
    """

    SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
               12: "<d"}

    def __init__(self, path: str):
        self.path = path
        self.size = os.path.getsize(path)
        self.file = open(path, "rb")
        self.buffer, self.pos = b"", 0           # the header is read as far as parsing needs it
        try:
            self._parse()
        finally:
            self.file.close()

    def _parse(self) -> None:
        path = self.path
        magic = self._take(min(4, self.size))
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
        version, n_tensors, n_meta = self._scalar("<I"), self._scalar("<Q"), self._scalar("<Q")
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        self._check_count(n_tensors + n_meta, 8, "entries")
        self.metadata = {}
        for _ in range(n_meta):
            key = self._string()
            if key in self.metadata:
                raise GGUFError(f"{path}: metadata key {key!r} appears twice")
            self.metadata[key] = self._value(self._scalar("<I"), key)
        self.tensors = {}
        for _ in range(n_tensors):
            name, info = self._tensor_info()
            if name in self.tensors:
                raise GGUFError(f"{path}: tensor {name!r} appears twice")
            self.tensors[name] = info
        alignment = self.metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0:
            raise GGUFError(f"{path}: general.alignment={alignment!r} must be a positive integer")
        self.data_start = -(-self.pos // alignment) * alignment
        for name, (type_name, shape, offset, nbytes) in self.tensors.items():
            if self.data_start + offset + nbytes > self.size:
                raise GGUFError(f"{path}: truncated file: tensor {name!r} ends past the end of the file")

    def data(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only memory map (uint8 [rows, bytes per row])."""
        type_name, shape, offset, nbytes = self.tensors[name]
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        if nbytes == 0:
            return np.zeros((rows, 0), dtype=np.uint8)
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start + offset, shape=(nbytes,))
        return np.asarray(mapped).reshape(rows, nbytes // rows)

    # --- parsing helpers ---------------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.buffer):
            if self.pos + n > self.size:
                raise GGUFError(f"{self.path}: truncated GGUF header (needs byte {self.pos + n} of {self.size})")
            more = max(self.pos + n - len(self.buffer), len(self.buffer), 1 << 20)
            self.buffer += self.file.read(more)
        chunk = self.buffer[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def _scalar(self, fmt: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        length = self._scalar("<Q")
        self._check_count(length, 1, "string bytes")
        try:
            return self._take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path}: a GGUF string at byte {self.pos} is not UTF-8") from None

    def _check_count(self, count: int, item_bytes: int, what: str) -> None:
        if count * item_bytes > self.size - self.pos:
            raise GGUFError(f"{self.path}: corrupt GGUF header ({count} {what} cannot fit in the file, "
                            f"at byte {self.pos})")

    def _value(self, kind: int, key: str):
        if kind in self.SCALARS:
            return self._scalar(self.SCALARS[kind])
        if kind == 8:
            return self._string()
        if kind == 9:
            item_kind, count = self._scalar("<I"), self._scalar("<Q")
            if item_kind in self.SCALARS:
                fmt = self.SCALARS[item_kind]
                self._check_count(count, struct.calcsize(fmt), f"items of {key!r}")
                return np.frombuffer(self._take(count * struct.calcsize(fmt)), dtype=np.dtype(fmt)).tolist()
            if item_kind == 9:
                raise GGUFError(f"{self.path}: metadata {key!r} nests arrays, which GGUF files do not")
            self._check_count(count, 8, f"items of {key!r}")
            return [self._value(item_kind, key) for _ in range(count)]
        raise GGUFError(f"{self.path}: metadata {key!r} has unknown GGUF value type {kind}")

    def _tensor_info(self) -> tuple:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        name = self._string()
        n_dims = self._scalar("<I")
        if n_dims > 4:
            raise GGUFError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (at most 4)")
        dims = [self._scalar("<Q") for _ in range(n_dims)]
        kind, offset = self._scalar("<I"), self._scalar("<Q")
        try:
            ggml_type = GGMLQuantizationType(kind)
        except ValueError:
            raise GGUFError(f"{self.path}: tensor {name!r} has unknown GGML type {kind}") from None
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        count = 1
        for n in dims:
            count *= n
        if count > self.size * 8 or (dims and dims[0] % block):
            raise GGUFError(f"{self.path}: tensor {name!r} has impossible dimensions {dims} for {ggml_type.name}")
        shape = tuple(int(n) for n in reversed(dims))                 # row-major: slowest first
        return name, (ggml_type.name, shape, offset, count // block * type_size)


def open_gguf(path: str) -> GGUFFile:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GGUFError(f"{path}: GGUF file not found")
    return GGUFFile(path)


# key(..., kind=int): a positive integer (a count); kind=float: a finite number. -> (test, wording)
_KINDS = {int: (lambda v: type(v) is int and v > 0, "a positive integer"),
          float: (lambda v: type(v) in (int, float) and math.isfinite(v), "a finite number")}


def metadata_getter(metadata: dict, prefix: str, path: str):
    """key(name, default, kind) -> metadata[f"{prefix}.{name}"]; a missing key without default names
    itself, and a value that is not of `kind` (int: a count, float: a finite number) is refused
    naming the key before any arithmetic uses it (a zero head count would otherwise be a ZeroDivisionError)."""
    missing = object()

    def key(name, default=missing, kind=None):
        full = f"{prefix}.{name}"
        if full in metadata:
            value = metadata[full]
            if kind is not None and not _KINDS[kind][0](value):
                raise GGUFError(f"{path}: GGUF metadata {full}={str(value)[:40]!r} must be {_KINDS[kind][1]}")
            return value
        if default is missing:
            raise GGUFError(f"{path}: GGUF metadata lacks required key {full!r}")
        return default
    return key


def gguf_config(reader) -> dict:
    """The HF config.json dict that a GGUF's metadata describes (any supported architecture)."""
    metadata = reader.metadata
    arch = metadata.get("general.architecture")
    family = family_for_architecture(arch)
    key = metadata_getter(metadata, arch, reader.path)
    names = set(reader.tensors)
    hidden, heads = key("embedding_length", kind=int), key("attention.head_count", kind=int)
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    if not isinstance(tokens, list):
        raise GGUFError(f"{reader.path}: GGUF metadata tokenizer.ggml.tokens must be a list of strings")
    config = {
        "architectures": [family.__name__.replace("Model", "ForCausalLM")],
        "model_type": family.model_type,
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length", kind=int),
        "num_hidden_layers": key("block_count", kind=int),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads, kind=int),
        "head_dim": (key("attention.key_length", None, kind=int) or key("rope.dimension_count", None, kind=int)
                     or hidden // heads),
        "max_position_embeddings": key("context_length", kind=int),
        "rope_parameters": rope_parameters(key),
        "vocab_size": key("vocab_size", None, kind=int) or len(tokens),
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in names,
        # llama.cpp writes output.weight only when the LM head is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
        "dtype": "float32",
    }
    eps = (key("attention.layer_norm_rms_epsilon", None, kind=float)
           or key("attention.layer_norm_epsilon", None, kind=float))
    if eps is not None:
        config[family.norm_eps_key] = shortest_float32(eps)
    config.update(family.gguf_config(key, names))
    return config


def rope_parameters(key) -> dict:
    theta = shortest_float32(key("rope.freq_base", 10000.0, kind=float))
    scaling = key("rope.scaling.type", "none")
    if scaling == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if scaling == "linear":
        factor = shortest_float32(key("rope.scaling.factor", kind=float))
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    raise GGUFError(f"unsupported RoPE scaling {scaling!r} in the GGUF metadata (supported: none, linear)")


@dataclass
class GGUFTensor:
    """One tensor of the file under its HF name, with its llama.cpp name, type and raw data."""
    hf_name: str
    gguf_name: str
    type_name: str          # "Q4_1", "F32", ...
    shape: tuple            # HF layout: [OUT, IN] or [D]
    raw: np.ndarray         # the file's bytes (a memory map)
    permute_heads: int | None = None   # q/k rows to un-permute (llama)
    path: str = "GGUF file"            # the file, for error messages


_BLOCK = re.compile(r"blk\.(\d+)\.")


def gguf_tensors(reader, config) -> dict[str, GGUFTensor]:
    """{HF name: GGUFTensor} for every tensor the family expects; errors name the missing tensor.
    The block count is compared with the blocks present before any per-layer table is built."""
    import gguf
    family = FAMILIES[config.model_type]
    blocks = {m[1] for name in reader.tensors if (m := _BLOCK.match(name))}
    if config.num_hidden_layers > len(blocks):
        raise GGUFError(f"{reader.path}: {family.gguf_architecture}.block_count={config.num_hidden_layers} but "
                        f"the file holds tensors for {len(blocks)} blocks")
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == family.gguf_architecture)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    stored = dict(reader.tensors)
    heads = family.gguf_permuted_heads(config)
    tensors = {}
    for hf_name, spec in family.tensor_specs(config).items():
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{name_map.get_name(base) or base}.{suffix}"
        if gguf_name not in stored:
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue                                   # tied: the embedding is the head
            raise GGUFError(f"{reader.path}: missing tensor {gguf_name!r} ({hf_name}, shape {list(spec.shape)})")
        type_name, shape, _, _ = stored.pop(gguf_name)
        if shape != spec.shape:
            raise GGUFError(f"{reader.path}: tensor {gguf_name!r} has shape {list(shape)}, expected "
                            f"{list(spec.shape)} from its metadata")
        projection = base.rsplit(".", 1)[-1]
        tensors[hf_name] = GGUFTensor(hf_name, gguf_name, type_name, shape, reader.data(gguf_name),
                                      heads.get(projection), reader.path)
    extra = [n for n in stored if n != "rope_freqs.weight"]
    if extra:
        raise GGUFError(f"{reader.path}: unexpected tensor {extra[0]!r}"
                        + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                        + f": a {config.num_hidden_layers}-block {family.gguf_architecture} model has no such tensor")
    if "rope_freqs.weight" in stored:
        raise GGUFError(f"{reader.path}: tensor 'rope_freqs.weight' (Llama 3.1-style scaled RoPE) is not supported")
    return tensors


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its `permute`; transformers' `reverse_permute_weights`).

    Within each head llama.cpp stores rows as [r0, r_{d/2}, r1, r_{d/2+1}, ...] so its
    adjacent-pair RoPE sees the pairs HF rotates; we restore [r0 .. r_{d/2-1}, r_{d/2} .. r_{d-1}].
    Works on float rows and on rows of quantized blocks alike (rows are independent).
    """
    half = weight.shape[0] // n_heads // 2
    rows = weight.reshape(n_heads, half, 2, *weight.shape[1:])  # [H*d, ...] -> [H, d/2, 2, ...]
    return np.ascontiguousarray(rows.swapaxes(1, 2).reshape(weight.shape))  # -> [H, 2, d/2, ...]


def _undecodable(tensor: GGUFTensor) -> GGUFError:
    return GGUFError(f"tensor {tensor.gguf_name!r} has GGUF type {tensor.type_name}, which gguf-py cannot decode")


def check_decodable(tensors) -> None:
    """Every tensor is of a type gguf-py decodes (asked on one zero block of each type): checked before
    any is decoded, so a file is refused before a conversion writes anything."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize
    known = {}
    for tensor in tensors:
        if tensor.type_name not in known:
            qtype = GGMLQuantizationType[tensor.type_name]
            try:
                dequantize(np.zeros(GGML_QUANT_SIZES[qtype][1], dtype=np.uint8), qtype)
                known[tensor.type_name] = True
            except NotImplementedError:
                known[tensor.type_name] = False
        if not known[tensor.type_name]:
            raise _undecodable(tensor)


def decoded(tensor: GGUFTensor) -> np.ndarray:
    """The tensor as float32 in HF layout, decoded by gguf-py (the reference transformers uses too)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    try:
        values = dequantize(tensor.raw, GGMLQuantizationType[tensor.type_name])
    except NotImplementedError:
        raise _undecodable(tensor) from None
    values = np.asarray(values, dtype=np.float32).reshape(tensor.shape)
    if tensor.permute_heads:
        values = unpermute_rope_rows(values, tensor.permute_heads)
    if not np.isfinite(values).all():
        raise GGUFError(f"{tensor.path}: tensor {tensor.gguf_name!r} contains NaN or Inf")
    return values


def check_block_scales(tensor: GGUFTensor, rows: np.ndarray) -> None:
    """Refuse NaN or Inf in the fp16 scales of blocks used as stored (rows [..., block bytes]):
    a kernel would absorb them silently. The scales interleave with the codes, so this reads every
    page of the tensor once at load (the first forward would read them anyway)."""
    scales = rows[..., :SCALE_BYTES[tensor.type_name]].view(np.uint16)          # [..., 1 or 2]
    if ((scales & 0x7C00) == 0x7C00).any():                                      # fp16 exponent all ones
        raise GGUFError(f"{tensor.path}: tensor {tensor.gguf_name!r} has a NaN or Inf block scale")


def gguf_weight(tensor: GGUFTensor, mode: str) -> tuple[Weight, str | None]:
    """A matrix as a Weight: blocks as stored where a kernel runs them; else decoded (and a notice)."""
    if tensor.type_name in NATIVE_BLOCKS:
        fmt = NATIVE_BLOCKS[tensor.type_name]
        rows = tensor.raw.reshape(tensor.shape[0], tensor.shape[1] // 32, -1)   # [OUT, IN/32, block bytes]
        check_block_scales(tensor, rows)
        if tensor.permute_heads:
            rows = unpermute_rope_rows(rows, tensor.permute_heads)              # a copy of q/k only
        return Weight(fmt, tensor.shape, {"blocks": rows}, mode), None
    if tensor.type_name == "F32":
        data = tensor.raw.view(np.float32).reshape(tensor.shape)
        data = unpermute_rope_rows(data, tensor.permute_heads) if tensor.permute_heads else data
        return Weight("float32", tensor.shape, {"data": data}), None
    if tensor.type_name == "BF16":
        data = tensor.raw.view(np.uint16).reshape(tensor.shape)
        data = unpermute_rope_rows(data, tensor.permute_heads) if tensor.permute_heads else data
        return Weight("bfloat16", tensor.shape, {"data": data}), None
    values = decoded(tensor)
    if tensor.type_name == "F16":
        return Weight("float32", tensor.shape, {"data": values}), "F16 -> float32 (exact)"
    return quantize(values, "q8_0", mode), f"{tensor.type_name} -> q8_0 (re-quantized from the exact values)"


# --- writing ------------------------------------------------------------------------------------------

GGUF_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "float32": "F32", "bfloat16": "BF16"}


def permute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter `permute`: the inverse of unpermute_rope_rows (to write llama GGUFs)."""
    half = weight.shape[0] // n_heads // 2
    rows = weight.reshape(n_heads, 2, half, *weight.shape[1:])
    return np.ascontiguousarray(rows.swapaxes(1, 2).reshape(weight.shape))


def gguf_metadata(config, vocab_size: int) -> dict:
    """{key: value} describing `config` (a ModelConfig) the way llama.cpp's converter writes it."""
    family = FAMILIES[config.model_type]
    arch = family.gguf_architecture
    meta = {"general.architecture": arch, "general.name": f"minilm {config.model_type}",
            f"{arch}.block_count": config.num_hidden_layers,
            f"{arch}.context_length": config.max_position_embeddings,
            f"{arch}.embedding_length": config.hidden_size,
            f"{arch}.feed_forward_length": config.intermediate_size,
            f"{arch}.attention.head_count": config.num_attention_heads,
            f"{arch}.attention.head_count_kv": config.num_key_value_heads,
            f"{arch}.attention.key_length": config.head_dim, f"{arch}.attention.value_length": config.head_dim,
            f"{arch}.rope.dimension_count": config.head_dim,
            f"{arch}.rope.freq_base": float(config.rope_parameters["rope_theta"]),
            f"{arch}.vocab_size": vocab_size}
    eps_key = "layer_norm_rms_epsilon" if family.norm_eps_key == "rms_norm_eps" else "layer_norm_epsilon"
    meta[f"{arch}.attention.{eps_key}"] = float(config.norm_eps)
    meta.update({f"{arch}.{k}": v for k, v in family.gguf_metadata(config).items()})
    # A placeholder vocabulary, so llama.cpp can open the file too (minilm reads ids, not text).
    meta.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [f"<t{i}>" for i in range(vocab_size)],
                 "tokenizer.ggml.scores": [0.0] * vocab_size,
                 "tokenizer.ggml.token_type": [2, 3, 3] + [1] * (vocab_size - 3)})
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, name)
        if isinstance(value, int):
            meta[f"tokenizer.ggml.{name.replace('pad_', 'padding_')}"] = value
    return meta


def _add_value(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list):
        writer.add_array(key, value)
    else:
        raise TypeError(f"GGUF metadata {key}: cannot write {type(value).__name__}")


def write_gguf(path: str, config, tensors: dict, progress: bool = False, metadata: dict | None = None) -> str:
    """Write a GGUF file of `config` (a ModelConfig) from {HF name: (format, shape, make)} where make()
    returns the tensor's stored array (quantized formats: the block bytes, q/k rows in HF order; the
    llama permutation is applied here). Tensors are made and written one at a time, in the given order.
    `metadata` adds or replaces entries (a real tokenizer instead of the placeholder vocabulary)."""
    import gguf
    from .progress import progress_bar
    family = FAMILIES[config.model_type]
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == family.gguf_architecture)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    heads = family.gguf_permuted_heads(config)
    writer = gguf.GGUFWriter(path, family.gguf_architecture)
    for key, value in {**gguf_metadata(config, config.vocab_size), **(metadata or {})}.items():
        if key != "general.architecture":
            _add_value(writer, key, value)
    order = []
    for hf_name, (fmt, shape, make) in tensors.items():
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{name_map.get_name(base)}.{suffix}"
        nbytes = stored_nbytes(fmt, shape)
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes,
                               raw_dtype=gguf.GGMLQuantizationType[GGUF_TYPES[fmt]])
        order.append((hf_name, make, heads.get(base.rsplit(".", 1)[-1])))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    with progress_bar(len(order), f"writing {os.path.basename(path)}", enabled=progress) as bar:
        for hf_name, make, permute_heads in order:
            data = make()
            writer.write_tensor_data(permute_rope_rows(data, permute_heads) if permute_heads else data)
            bar.update(1)
    writer.close()
    return path


def stored_nbytes(fmt: str, shape: tuple) -> int:
    """Bytes of a tensor in a GGUF storage format."""
    count = int(np.prod(shape, dtype=np.int64))
    per_block = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
    if fmt in per_block:
        return count // 32 * per_block[fmt]
    return count * {"float32": 4, "bfloat16": 2}[fmt]
