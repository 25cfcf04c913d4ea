"""Checkpoint folders: one model.safetensors, or shards listed in model.safetensors.index.json.

Only files named inside the folder are opened: a shard name in the index that
points elsewhere (`../x`, `sub/x`, an absolute path) is refused, as is anything
that is not a regular file (a FIFO, a device, a directory). A file of the
folder may be a symlink to a regular file: Hugging Face's cache lays out
snapshots as symlinks into its blob store. Pickle checkpoints (.bin, .pt) are
never opened. The tensors are located here (a header parse per file); reading
them is `StoredTensor.read()` (a copy) or `.map()` (a read-only memory map).
"""
from __future__ import annotations

import os
import re

import numpy as np

from .errors import WeightsError, load_json_file
from .formats.bfloat16 import bfloat16_to_float32
from .safetensors_file import StoredTensor, check_regular_file, read_header

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024
_LAYER_PREFIX = re.compile(r"model\.layers\.(\d+)\.")


def checkpoint_files(folder: str) -> list[str]:
    """model.safetensors, or the shards listed in model.safetensors.index.json (all inside `folder`)."""
    single, index = os.path.join(folder, SINGLE_FILE), os.path.join(folder, INDEX_FILE)
    if os.path.lexists(single):
        check_regular_file(single, "safetensors file")
        return [single]
    if os.path.lexists(index):
        return [shard_path(folder, name, index) for name in sorted(set(read_index(index).values()))]
    if any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(folder)):
        raise WeightsError(f"{folder}: only pickle weights (.bin/.pt) found; minilm loads safetensors only "
                           "(never unpickles). Convert with transformers: save_pretrained(safe_serialization=True)")
    raise WeightsError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


def read_index(index: str) -> dict[str, str]:
    """The index's weight_map {tensor name: shard file name}."""
    weight_map = load_json_file(index, "shard index", WeightsError, MAX_INDEX_BYTES).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightsError(f"{index}: 'weight_map' must map tensor names to shard file names")
    return weight_map


def shard_path(folder: str, name: str, index: str) -> str:
    """The shard's path, refusing names that leave the folder or are not regular files."""
    if not name or os.path.basename(name) != name or name in (".", "..") or "\\" in name or "\0" in name:
        raise WeightsError(f"{index}: shard {name!r} is not a file name inside the model folder")
    path = os.path.join(folder, name)
    if not os.path.lexists(path):
        raise WeightsError(f"{index}: lists shard {name!r} which does not exist")
    check_regular_file(path, "shard")
    return path


def read_checkpoint(folder: str) -> dict[str, StoredTensor]:
    """All tensors of a checkpoint (single file or shards), located but not read."""
    tensors: dict[str, StoredTensor] = {}
    for path in checkpoint_files(folder):
        for name, stored in read_header(path)[0].items():
            if name in tensors:
                raise WeightsError(f"{path}: tensor {name!r} appears in more than one shard")
            tensors[name] = stored
    return tensors


def checkpoint_metadata(folder: str) -> dict:
    """The __metadata__ of every file of the checkpoint, merged (torchao describes its tensors there)."""
    metadata = {}
    for path in checkpoint_files(folder):
        metadata.update(read_header(path)[1])
    return metadata


def check_layer_count(tensors: dict, num_hidden_layers: int, folder: str) -> None:
    """Refuse a config that claims more layers than the checkpoint holds, before any per-layer
    table is built (num_hidden_layers=10**7 would otherwise cost minutes and gigabytes)."""
    present = {m[1] for name in tensors if (m := _LAYER_PREFIX.match(name))}
    if num_hidden_layers > len(present):
        raise WeightsError(f"{folder}: config.json has num_hidden_layers={num_hidden_layers} but the checkpoint "
                           f"holds tensors for {len(present)} layers")


def check_finite(stored: StoredTensor, values: np.ndarray) -> None:
    """Refuse NaN and Inf (bfloat16 bits: an exponent of all ones)."""
    bad = ((values & 0x7F80) == 0x7F80).any() if stored.dtype == "BF16" else not np.isfinite(values).all()
    if bad:
        raise WeightsError(f"{stored.path}: tensor {stored.name!r} contains NaN or Inf")


def read_checked(stored: StoredTensor) -> np.ndarray:
    """A private copy of a tensor's values, refusing NaN and Inf in a float tensor (codes pass as read)."""
    values = stored.read()
    if stored.dtype in ("F32", "F16", "BF16", "F64"):
        check_finite(stored, values)
    return values


def mapped_checked(stored: StoredTensor) -> np.ndarray:
    """A read-only memory map of a small float tensor (scales, absmax), scanned once for NaN and Inf:
    a scale used in place is small next to its codes, and a bad one would spoil a whole block silently."""
    values = stored.map()
    check_finite(stored, values)
    return values


def to_float32(stored: StoredTensor, values: np.ndarray) -> np.ndarray:
    """Stored values (bfloat16 as uint16 bits) widened to float32; refuses NaN and Inf."""
    check_finite(stored, values)
    return bfloat16_to_float32(values) if stored.dtype == "BF16" else values.astype(np.float32, copy=False)


def file_identity(path: str) -> tuple:
    """What changes when a file is rewritten, truncated or replaced: (inode, size, mtime)."""
    info = os.stat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns


def check_unchanged(files: dict[str, tuple]) -> None:
    """Refuse to run on memory-mapped weights whose file changed since loading: its pages would change
    the model's answers silently, or (truncated) crash the process when touched."""
    for path, identity in files.items():
        try:
            now = file_identity(path)
        except OSError:
            now = None
        if now != identity:
            raise WeightsError(f"{path}: the weights file changed on disk after the model was loaded from it "
                               "(memory-mapped); load the model again")
