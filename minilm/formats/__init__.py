"""Weight formats: how a matrix [OUT, IN] is stored, and the NumPy math that reads it back.

A `Weight` is one matrix in one storage format: the format's name, the logical
shape [OUT, IN] and the format's named arrays. Every array has OUT as its
leading axis, so a row of the matrix is row `o` of every array (the embedding
gathers rows that way, whatever the format):

    float32    data    float32 [OUT, IN]
    bfloat16   data    uint16  [OUT, IN]        the upper 16 bits of each float32
    float16    data    float16 [OUT, IN]
    (quantized formats add their own: codes, per-block scales, mins; see their modules)

Each format registers a `Format` with two functions, the reference a learner reads:

    encode(float32 [OUT, IN], **options) -> {array name: array}
    decode(weight) -> float32 [OUT, IN]

A backend's `linear(x, weight, bias)` multiplies by a Weight in any format it
supports; `prepare_weight` refuses the others with a one-line error naming the
backend and the format. The NumPy reference supports every format by decoding.

`mode` says how a quantized weight meets its activations: "exact" (decode the
weights, float32 products: what transformers computes on a GGUF) or "fast"
(activations quantized to int8 per 32-block, integer dot products: what
llama.cpp computes). Dense formats ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MODES = ("exact", "fast")


class UnsupportedFormatError(ValueError):
    """A weight format a backend (or a tensor's shape) cannot use: names both."""


@dataclass(frozen=True)
class Format:
    name: str
    encode: Callable[..., dict]          # float32 [OUT, IN] -> {name: array with OUT leading}
    decode: Callable[["Weight"], np.ndarray]   # -> float32 [OUT, IN]
    block: int = 1                       # IN must be a multiple of this
    bits: float = 32.0                   # storage bits per weight, scales included (for docs and bench)
    description: str = ""
    options: tuple = ()                  # names of encode's keyword options (e.g. group_size)
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
    arrays = fmt.encode(np.ascontiguousarray(array, dtype=np.float32), **options)
    return Weight(format, array.shape, arrays, mode, options)


def dequantize(weight: Weight) -> np.ndarray:
    return weight.dequantize()


def as_weight(array_or_weight, format: str = "float32") -> Weight:
    """A bare float32 array becomes a float32 Weight (handy in tests and notebooks)."""
    if isinstance(array_or_weight, Weight):
        return array_or_weight
    return quantize(array_or_weight, format)


from . import bfloat16, dense  # noqa: E402,F401  (register the dense formats)
from . import bnb, ggml, torchao  # noqa: E402,F401  (register the quantized formats)
