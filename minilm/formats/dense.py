"""The unquantized formats: float32, bfloat16 (as uint16 bits) and float16."""
from __future__ import annotations

import numpy as np

from .weight import Format, register
from .bfloat16 import bfloat16_to_float32, to_bfloat16

register(Format(
    "float32", bits=32, description="IEEE single precision, as in the checkpoint",
    encode=lambda w: {"data": np.ascontiguousarray(w, dtype=np.float32)},
    decode=lambda weight: np.asarray(weight.data, dtype=np.float32)))

register(Format(
    "bfloat16", bits=16, description="float32's upper 16 bits (rounded to nearest even); float32 arithmetic",
    encode=lambda w: {"data": to_bfloat16(w)},
    decode=lambda weight: bfloat16_to_float32(weight.data)))

register(Format(
    "float16", bits=16, description="IEEE half precision; float32 arithmetic",
    encode=lambda w: {"data": np.asarray(w, dtype=np.float32).astype(np.float16)},
    decode=lambda weight: np.asarray(weight.data).astype(np.float32)))
