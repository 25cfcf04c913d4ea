"""The op contract: the functions every backend provides, with these exact signatures.

Shape legend: B batch, T query tokens, S key tokens, D hidden size, H query
heads, KV key/value heads, HD head dim, F intermediate size, V vocabulary.

The model code calls `backend.<op>(...)` and never branches on the backend.
A backend is built from one table {op name: function} by `build_backend`,
which refuses a table that misses an op or names its parameters differently;
tests/test_backends.py checks every backend against the NumPy reference on
random inputs, op by op. Adding an op: its reference, its kernels, one line
per backend table, and a line in `Ops` below.
"""
from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Protocol

from ..formats import Weight


class Ops(Protocol):
    """Each method is one op; the docstrings are the contract."""

    def rms_norm(self, x, weight, eps):
        """x [..., D], weight [D] -> x / sqrt(mean(x^2) + eps) * weight   [..., D]"""

    def layer_norm(self, x, weight, eps):
        """x [..., D], weight [D] or [H, HD] (qk-norm on x [B,T,H,HD]) -> Cohere LayerNorm, no bias   [..., D]"""

    def apply_rope(self, x, cos, sin, interleaved):
        """x [B,T,H,HD], cos/sin [B,T,HD/2] -> rotated [B,T,H,HD]; pairs (i, i+HD/2) or (2i, 2i+1)"""

    def attention(self, q, k, v, mask, scale):
        """q [B,T,H,HD], k/v [B,S,KV,HD], mask [B,T,S] bool (True = visible) -> [B,T,H,HD].
        Query head h reads kv head h // (H // KV); a row with no visible key outputs zeros, a row with a
        NaN or +inf visible score NaN (as torch's softmax)."""

    def attention_probs(self, q, k, mask, scale):
        """q [B,T,H,HD], k [B,S,KV,HD], mask [B,T,S] bool -> the softmax weights [B,H,T,S] float32 that
        `attention` multiplies v by: 0 on masked keys; a row with no visible key is all zeros, one with a NaN
        or +inf visible score all NaN."""

    def swiglu(self, gate, up):
        """gate, up [..., F] -> silu(gate) * up   [..., F]"""

    def linear(self, x, weight: Weight, bias=None):
        """x [..., IN] @ W^T (+ bias [OUT]) -> [..., OUT]; W [OUT, IN] a formats.Weight in any format the
        backend supports (prepare_weight refuses the others)."""

    def embedding(self, ids, table: Weight):
        """ids [B,T] int -> rows of table [V, D] as float32   [B,T,D]"""

    def scale_logits(self, logits, scale):
        """logits [...] * scale"""

    def argmax(self, scores):
        """scores [B,V] -> [B] int64, the first index on ties"""

    def top_k_filter(self, scores, k, min_keep=1):
        """host scores [B,V] -> [B,V], -inf below the k-th largest (ties kept)"""

    def top_p_filter(self, scores, p, min_keep=1):
        """host scores [B,V] -> [B,V], -inf on the low tail whose cumulative probability is <= 1 - p"""

    def asarray(self, array):
        """host numpy array -> backend array"""

    def to_numpy(self, array):
        """backend array -> host numpy array"""

    def threads(self, count=None):
        """The number of CPU threads the kernels use; with count, set it first (clipped to 1..maximum).
        Backends without a thread pool answer 1."""

    def supports(self, format, mode):
        """True if linear/embedding run Weights of this format in this mode ("exact" or "fast")."""

    def prepare_weight(self, weight: Weight):
        """host Weight -> the Weight the backend's kernels read (moved to the device, repacked);
        raises UnsupportedFormatError naming the backend and the format if it cannot run it."""


OPS: tuple[str, ...] = tuple(name for name in vars(Ops) if not name.startswith("_"))


def parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


def build_backend(name: str, table: dict) -> SimpleNamespace:
    """A backend namespace from {op: function}, checked against the contract."""
    missing = [op for op in OPS if op not in table]
    extra = [op for op in table if op not in OPS]
    if missing or extra:
        raise TypeError(f"backend {name!r}: missing ops {missing}, unknown ops {extra}")
    for op in OPS:
        expected, got = parameters(getattr(Ops, op)), parameters(table[op])
        if got != expected:
            raise TypeError(f"backend {name!r}: {op}{tuple(got)} does not match the contract {op}{tuple(expected)}")
    return SimpleNamespace(name=name, **table)
