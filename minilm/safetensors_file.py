"""The safetensors format, read and written by hand: 8-byte header length, JSON header, raw data.

    u64 little-endian N | N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {...}} | data

Why not the `safetensors` library: its NumPy API cannot return bfloat16 (NumPy
has no such dtype) and its errors do not name the file; and its writer needs
every tensor in memory at once, while a 7B checkpoint must be written (and
converted) one tensor at a time. Reading is a header parse plus a copy or a
read-only memory map of each tensor's bytes; nothing is ever unpickled.

The reader enforces the format's own rules before trusting any offset: the
header is a JSON object with unique keys; every shape is a list of
non-negative integers; every tensor's byte range matches its shape and dtype;
the ranges are contiguous, in order, non-overlapping, and cover the data
section exactly. The file must be a regular file (a FIFO or a device would
hang or lie about its size).
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

import numpy as np

from .errors import WeightsError

# safetensors dtype -> NumPy storage dtype (bfloat16 travels as its raw bits in uint16)
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
          "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
          "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "uint16": "BF16", "float64": "F64",
               "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
MAX_HEADER_BYTES = 100 * 1024 * 1024          # the safetensors library's own limit


def check_regular_file(path: str, what: str = "file") -> int:
    """Size of `path`, refusing anything that is not a regular file (directories, FIFOs, devices)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise WeightsError(f"{path}: {what} not found") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise WeightsError(f"{path}: {what} is {kind}")
    return info.st_size


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives in a safetensors file; read on demand, one tensor at a time."""
    path: str
    name: str
    dtype: str          # safetensors dtype: F32, F16, BF16, ...
    shape: tuple
    offset: int         # absolute byte offset in the file
    nbytes: int

    @property
    def storage_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    def read(self) -> np.ndarray:
        """A private copy of the stored values (bfloat16 as uint16 bits)."""
        count = self.nbytes // self.storage_dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            array = np.fromfile(f, dtype=self.storage_dtype, count=count)
        if array.size != count:
            raise WeightsError(f"{self.path}: truncated file: tensor {self.name!r} is cut short")
        return array.reshape(self.shape)

    def map(self) -> np.ndarray:
        """A read-only memory map of the stored values: no copy; pages come from the page cache and
        are shared with every process that maps the same file."""
        if self.nbytes == 0:
            return np.zeros(self.shape, dtype=self.storage_dtype)
        mapped = np.memmap(self.path, dtype=self.storage_dtype, mode="r", offset=self.offset, shape=self.shape)
        return np.asarray(mapped)        # a plain ndarray view of the same pages (memmap slicing is slow)


def read_header(path: str) -> tuple[dict[str, StoredTensor], dict]:
    """-> ({name: StoredTensor} in file order, __metadata__), after checking the format's rules."""
    size = check_regular_file(path, "safetensors file")
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path}: truncated safetensors file (no header)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise WeightsError(f"{path}: corrupt safetensors header (length {header_len}, file {size} bytes)")
        header = _parse_json_object(f.read(header_len), path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    entries = [_check_entry(path, name, info) for name, info in header.items()]
    _check_layout(path, entries, data_size)
    tensors = {name: StoredTensor(path, name, dtype, shape, data_start + start, end - start)
               for name, dtype, shape, start, end in entries}
    return tensors, metadata


def _parse_json_object(raw: bytes, path: str) -> dict:
    def unique_keys(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            duplicate = next(k for k in keys if keys.count(k) > 1)
            raise WeightsError(f"{path}: corrupt safetensors header (key {duplicate!r} appears twice)")
        return dict(pairs)
    try:
        header = json.loads(raw, object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise WeightsError(f"{path}: corrupt safetensors header ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (expected a JSON object, got {type(header).__name__})")
    return header


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path: str, name: str, info) -> tuple:
    """-> (name, dtype, shape, start, end) of one well-formed header entry."""
    if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
        raise WeightsError(f"{path}: tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES:
        raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_index(n) for n in shape):
        raise WeightsError(f"{path}: tensor {name!r} has an invalid shape {shape!r} (non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise WeightsError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    count = 1
    for n in shape:
        count *= n
    start, end = offsets
    if end - start != count * DTYPES[dtype].itemsize:
        raise WeightsError(f"{path}: tensor {name!r} has data_offsets {start}..{end} that do not match "
                           f"shape {shape} {dtype}")
    return name, dtype, tuple(shape), start, end


def _check_layout(path: str, entries: list, data_size: int) -> None:
    """Byte ranges contiguous from 0, in order, without overlap, covering the data section."""
    position = 0
    for name, _, _, start, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if start != position:
            problem = "overlaps the previous tensor" if start < position else "leaves a gap before it"
            raise WeightsError(f"{path}: tensor {name!r} starts at byte {start} and {problem} (safetensors "
                               "tensors are contiguous and non-overlapping)")
        if end > data_size:
            raise WeightsError(f"{path}: truncated file: tensor {name!r} ends at byte {end} of a "
                               f"{data_size}-byte data section")
        position = end
    if position != data_size:
        raise WeightsError(f"{path}: {data_size - position} bytes after the last tensor are not described by "
                           "the header")


class SafetensorsWriter:
    """Stream tensors into a .safetensors file, one tensor in memory at a time.

    The header is written first (shapes and dtypes are known up front), then each
    tensor's bytes in the declared order:

        with SafetensorsWriter(path, {"w": ("F32", (4, 8))}) as out:
            out.write("w", array)
    """

    def __init__(self, path: str, specs: dict, metadata: dict | None = None):
        self.path, self.specs = path, dict(specs)
        header, offset = {"__metadata__": {"format": "pt", **(metadata or {})}}, 0
        for name, (dtype, shape) in self.specs.items():
            size = DTYPES[dtype].itemsize * int(np.prod(shape, dtype=np.int64))
            header[name] = {"dtype": dtype, "shape": [int(n) for n in shape], "data_offsets": [offset, offset + size]}
            offset += size
        header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
        header_bytes += b" " * (-len(header_bytes) % 8)          # data starts 8-aligned, like the library's
        self._order = iter(self.specs)
        self._file = open(path, "wb")
        self._file.write(len(header_bytes).to_bytes(8, "little") + header_bytes)

    def write(self, name: str, array: np.ndarray) -> None:
        expected = next(self._order, None)
        if name != expected:
            raise ValueError(f"{self.path}: tensor {name!r} written out of order (expected {expected!r})")
        dtype, shape = self.specs[name]
        if tuple(array.shape) != tuple(shape) or array.dtype.newbyteorder("<") != DTYPES[dtype].newbyteorder("<"):
            raise ValueError(f"{self.path}: tensor {name!r} is {array.dtype}{list(array.shape)}, "
                             f"declared {dtype}{list(shape)}")
        self._file.write(np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes())

    def close(self) -> None:
        if self._file.closed:
            return
        missing = next(self._order, None)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if missing is not None:
            raise ValueError(f"{self.path}: tensor {missing!r} was declared but never written")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def save(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write {name: array} in one call (uint16 arrays are written as bfloat16 bits)."""
    specs = {name: (DTYPE_NAMES[a.dtype.name], a.shape) for name, a in tensors.items()}
    with SafetensorsWriter(path, specs, metadata) as out:
        for name, array in tensors.items():
            out.write(name, array)
