"""Checkpoint weights: safetensors (single or sharded), f32/f16/bf16, hub lookup.

The safetensors format is read by hand (8-byte header length, JSON header,
raw little-endian data) so bf16 needs no torch and every error can name the
file and the tensor. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np


class WeightsError(ValueError):
    """A checkpoint file that cannot be loaded: names the file and the tensor."""


# safetensors dtype -> (numpy storage dtype, bytes per element)
_DTYPES = {
    "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
    "F64": (np.float64, 8), "I64": (np.int64, 8), "I32": (np.int32, 4),
}
_MAX_HEADER = 100 * 1024 * 1024


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits into place."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """-> ({name: {dtype, shape, data_offsets}}, offset of the data section)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path}: truncated safetensors file (no header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise WeightsError(f"{path}: corrupt safetensors header (length {header_len}, file {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    for name, info in header.items():
        _check_entry(path, name, info, size - data_start)
    return header, data_start


def _check_entry(path: str, name: str, info: dict, data_size: int) -> None:
    if info.get("dtype") not in _DTYPES:
        raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    start, end = info["data_offsets"]
    count = int(np.prod(info["shape"], dtype=np.int64))
    if end - start != count * _DTYPES[info["dtype"]][1] or start < 0:
        raise WeightsError(f"{path}: tensor {name!r} has data_offsets {start}..{end} that do not match "
                           f"shape {info['shape']} {info['dtype']}")
    if end > data_size:
        raise WeightsError(f"{path}: truncated file: tensor {name!r} ends at byte {end} of a "
                           f"{data_size}-byte data section")


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives in a safetensors file; read on demand, one tensor at a time."""
    path: str
    name: str
    dtype: str          # safetensors dtype: F32, F16, BF16, ...
    shape: tuple
    offset: int         # absolute byte offset in the file

    def read_float32(self) -> np.ndarray:
        """A float32 copy (bf16 widened without torch), refusing NaN/Inf."""
        storage, _ = _DTYPES[self.dtype]
        count = int(np.prod(self.shape, dtype=np.int64))
        raw = np.fromfile(self.path, dtype=storage, count=count, offset=self.offset).reshape(self.shape)
        array = bf16_to_float32(raw) if self.dtype == "BF16" else raw.astype(np.float32, copy=False)
        if not np.all(np.isfinite(array)):
            raise WeightsError(f"{self.path}: tensor {self.name!r} contains NaN or Inf")
        return array


def read_safetensors(path: str) -> dict[str, StoredTensor]:
    """The tensors of one file, located but not read: {name: StoredTensor}."""
    header, data_start = read_safetensors_header(path)
    return {name: StoredTensor(path, name, info["dtype"], tuple(info["shape"]), data_start + info["data_offsets"][0])
            for name, info in header.items()}


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """Load every tensor of one file as float32."""
    return {name: t.read_float32() for name, t in read_safetensors(path).items()}


def checkpoint_files(folder: str) -> list[str]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return [single]
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
        paths = [os.path.join(folder, s) for s in shards]
        for p in paths:
            if not os.path.exists(p):
                raise WeightsError(f"{index}: lists shard {os.path.basename(p)} which does not exist")
        return paths
    if any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(folder)):
        raise WeightsError(f"{folder}: only pickle weights (.bin/.pt) found; minilm loads safetensors only "
                           "(never unpickles). Convert with transformers: save_pretrained(safe_serialization=True)")
    raise WeightsError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def read_checkpoint(folder: str) -> dict[str, StoredTensor]:
    """All tensors of a checkpoint (single file or shards), located but not read."""
    tensors: dict[str, StoredTensor] = {}
    for path in checkpoint_files(folder):
        for name, stored in read_safetensors(path).items():
            if name in tensors:
                raise WeightsError(f"{path}: tensor {name!r} appears in more than one shard")
            tensors[name] = stored
    return tensors


def load_checkpoint(folder: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint as float32 arrays."""
    return {name: t.read_float32() for name, t in read_checkpoint(folder).items()}


def resolve_model_path(path_or_repo_id: str) -> str:
    """A local folder, or a hub id resolved through huggingface_hub's cache (offline once cached)."""
    if os.path.isdir(path_or_repo_id):
        return path_or_repo_id
    looks_like_repo = path_or_repo_id.count("/") == 1 and not path_or_repo_id.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise FileNotFoundError(f"model path {path_or_repo_id!r} does not exist")
    from huggingface_hub import snapshot_download
    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer*"]
    try:
        return snapshot_download(path_or_repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    try:
        return snapshot_download(path_or_repo_id, allow_patterns=patterns)
    except Exception as e:
        raise FileNotFoundError(f"model {path_or_repo_id!r} is neither a local folder nor in the Hugging Face "
                                f"cache, and could not be downloaded ({type(e).__name__})") from None
