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
from .weight import FORMATS, MODES, Format, UnsupportedFormatError, Weight, get_format, quantize, register
from . import bnb, dense, ggml, torchao  # noqa: E402,F401  (each format module registers its formats on import)

__all__ = ["FORMATS", "MODES", "Format", "UnsupportedFormatError", "Weight", "get_format", "quantize", "register"]
