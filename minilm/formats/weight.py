"""The Weight object and the format registry (the formats themselves register from their modules)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import UnsupportedFormatError

MODES = ("exact", "fast")


@dataclass(frozen=True)
class Format:
    name: str
    encode: Callable[..., dict]          # float32 [OUT, IN] -> {name: array with OUT leading}; rows independent
    decode: Callable[["Weight"], np.ndarray]   # -> float32 [OUT, IN]
    block: int = 1                       # IN must be a multiple of this
    bits: float = 32.0                   # storage bits per weight, scales included (for docs and bench)
    description: str = ""
    options: tuple = ()                  # names of encode's keyword options (e.g. group_size)
    defaults: dict = field(default_factory=dict)   # their default values

    def row_multiple(self, options: dict | None = None) -> int:
        """What the row length (IN) must be a multiple of, with these encode options."""
        merged = {**self.defaults, **(options or {})}
        return max(self.block, merged.get("group_size", 1))
    fast: Callable | None = field(default=None)  # reference for mode="fast": (x2 [N, IN], weight) -> [N, OUT]


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UnsupportedFormatError(f"unknown weight format {name!r} (known: {', '.join(FORMATS)})")
    return FORMATS[name]


class Weight:
    """A matrix [OUT, IN] in one storage format; `weight.data`, `weight.blocks`... are its arrays."""

    def __init__(self, format: str, shape: tuple, arrays: dict, mode: str = "exact", options: dict | None = None):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}")
        self.format, self.shape, self.mode = format, tuple(int(n) for n in shape), mode
        self.arrays = dict(arrays)
        self.options = dict(options or {})   # encode options that decode needs too (e.g. group_size)

    def __getattr__(self, name):
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(f"{self.format} weight has no array {name!r} (it has: {', '.join(arrays)})")

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in self.arrays.items())
        return f"Weight({self.format}, {list(self.shape)}, {parts}{', fast' if self.mode == 'fast' else ''})"

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())

    def with_arrays(self, **arrays) -> "Weight":
        """The same matrix with its arrays replaced (moved to a device, made contiguous, repacked)."""
        return Weight(self.format, self.shape, {**self.arrays, **arrays}, self.mode, self.options)

    def with_mode(self, mode: str) -> "Weight":
        return Weight(self.format, self.shape, self.arrays, mode, self.options)

    def take_rows(self, rows: np.ndarray) -> "Weight":
        """Rows `rows` of the matrix, still in this format (every array has OUT leading)."""
        rows = np.asarray(rows)
        return Weight(self.format, (rows.size, self.shape[1]), {k: a[rows] for k, a in self.arrays.items()},
                      self.mode, self.options)

    def dequantize(self) -> np.ndarray:
        """float32 [OUT, IN]: the format's reference decode."""
        return get_format(self.format).decode(self)


def quantize(array: np.ndarray, format: str, mode: str = "exact", **options) -> Weight:
    """float32 [OUT, IN] -> Weight in `format` (encode options such as group_size pass through)."""
    fmt = get_format(format)
    array = np.asarray(array)
    if array.ndim != 2:
        raise UnsupportedFormatError(f"format {format!r} stores matrices; got shape {list(array.shape)}")
    if array.shape[1] % fmt.block:
        raise UnsupportedFormatError(f"format {format!r} needs a row length that is a multiple of {fmt.block}; "
                                     f"got shape {list(array.shape)}")
    unknown = set(options) - set(fmt.options)
    if unknown:
        raise UnsupportedFormatError(f"format {format!r} has no option {sorted(unknown)[0]!r}")
    arrays = encode_in_chunks(fmt.encode, np.ascontiguousarray(array, dtype=np.float32), options)
    return Weight(format, array.shape, arrays, mode, options)


CHUNK_ELEMENTS = 1 << 18      # 1 MiB of float32 per chunk: the encoder's temporaries stay in the L2 cache


def encode_in_chunks(encode: Callable[..., dict], array: np.ndarray, options: dict,
                     chunk_elements: int = CHUNK_ELEMENTS, workers: int | None = None) -> dict:
    """encode(array) computed on chunks of rows, on every core (NumPy releases the GIL in its loops).

    Every format encodes each row on its own, so the bytes equal one whole-matrix call's; the chunks
    only make it 2-5x faster on a 7B model's matrices (temporaries in cache, two cores busy)."""
    rows = max(1, chunk_elements // max(1, array.shape[1]))
    if array.shape[0] <= rows:
        return encode(array, **options)
    chunks = [array[i:i + rows] for i in range(0, array.shape[0], rows)]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        parts = list(pool.map(lambda chunk: encode(chunk, **options), chunks))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
