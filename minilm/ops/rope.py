"""Rotary position embeddings: frequencies for every scaling type, and the rotation.

Frequencies are computed in float32 exactly as transformers 5.23 does
(docs/semantics.md sections 2.3-2.5), including the per-call state of the
`dynamic` (sticky) and `longrope` types, held by `RotaryEmbedding`.
"""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def default_inv_freq(theta: float, dim: int) -> np.ndarray:
    """inv_freq[i] = 1 / theta^(2i/dim), i = 0..dim/2-1, in float32.  -> [dim/2]"""
    exponent = np.arange(0, dim, 2).astype(f32) / f32(dim)
    return (f32(1.0) / (f32(theta) ** exponent)).astype(f32)


def linear_inv_freq(rope: dict, dim: int) -> np.ndarray:
    # Position interpolation: every frequency slowed down by `factor`.
    return (default_inv_freq(rope["rope_theta"], dim) / f32(rope["factor"])).astype(f32)


def dynamic_inv_freq(rope: dict, dim: int, max_pos: int, seq_len: int) -> np.ndarray:
    # NTK-aware: grow the base with the sequence length once it passes max_pos.
    factor, seq_len = rope["factor"], max(seq_len, max_pos)
    base = rope["rope_theta"] * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return default_inv_freq(base, dim)


def yarn_inv_freq(rope: dict, dim: int, max_pos: int) -> tuple[np.ndarray, float]:
    base, orig = rope["rope_theta"], rope["original_max_position_embeddings"]
    factor = rope.get("factor") or max_pos / orig
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
        if rope.get("mscale") and rope.get("mscale_all_dim"):
            attention_factor = mscale(factor, rope["mscale"]) / mscale(factor, rope["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero in the ramp
    ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1).astype(f32)
    pos_freqs = f32(base) ** (np.arange(0, dim, 2).astype(f32) / f32(dim))
    inv_extrapolation = f32(1.0) / pos_freqs                 # high frequencies: kept
    inv_interpolation = f32(1.0) / (f32(factor) * pos_freqs)  # low frequencies: slowed by factor
    keep = f32(1.0) - ramp
    inv_freq = inv_interpolation * (f32(1.0) - keep) + inv_extrapolation * keep
    return inv_freq.astype(f32), float(attention_factor)


def longrope_inv_freq(rope: dict, dim: int, max_pos: int, seq_len: int) -> tuple[np.ndarray, float]:
    orig = rope["original_max_position_embeddings"]
    factor = rope.get("factor") or max_pos / orig
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    # Long factors once the sequence passes the original context, short ones before.
    ext = np.asarray(rope["long_factor"] if seq_len > orig else rope["short_factor"], dtype=f32)
    exponent = np.arange(0, dim, 2).astype(f32) / f32(dim)
    return (f32(1.0) / (ext * (f32(rope["rope_theta"]) ** exponent))).astype(f32), float(attention_factor)


def llama3_inv_freq(rope: dict, dim: int) -> np.ndarray:
    inv_freq = default_inv_freq(rope["rope_theta"], dim)
    factor, orig = rope["factor"], rope["original_max_position_embeddings"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    wavelen = f32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > f32(orig / low), inv_freq / f32(factor), inv_freq)
    smooth = (f32(orig) / wavelen - f32(low)) / f32(high - low)
    smoothed = (f32(1) - smooth) * scaled / f32(factor) + smooth * scaled
    is_medium = ~(wavelen < f32(orig / high)) & ~(wavelen > f32(orig / low))
    return np.where(is_medium, smoothed, scaled).astype(f32)


class RotaryEmbedding:
    """inv_freq for one model, with the per-call update rules of dynamic and longrope."""

    def __init__(self, rope: dict, head_dim: int, max_position_embeddings: int):
        self.rope, self.dim, self.max_pos = rope, head_dim, max_position_embeddings
        self.rope_type = rope["rope_type"]
        self.inv_freq, self.attention_scaling = self._compute(seq_len=None)
        self.original_inv_freq = self.inv_freq
        self.max_seq_len_cached = max_position_embeddings  # dynamic only

    @property
    def depends_on_length(self) -> bool:
        """dynamic and longrope recompute their frequencies from each call's length, so a prompt
        split into chunks would not rotate like the whole prompt does in transformers."""
        return self.rope_type in ("dynamic", "longrope")

    def _compute(self, seq_len):
        rope, dim, max_pos = self.rope, self.dim, self.max_pos
        if self.rope_type == "default":
            return default_inv_freq(rope["rope_theta"], dim), 1.0
        if self.rope_type == "linear":
            return linear_inv_freq(rope, dim), 1.0
        if self.rope_type == "dynamic":
            return dynamic_inv_freq(rope, dim, max_pos, seq_len or max_pos), 1.0
        if self.rope_type == "yarn":
            return yarn_inv_freq(rope, dim, max_pos)
        if self.rope_type == "longrope":
            return longrope_inv_freq(rope, dim, max_pos, seq_len or 0)
        return llama3_inv_freq(rope, dim), 1.0

    def update(self, seq_len: int) -> None:
        """Called once per forward with seq_len = max(position_ids) + 1, like transformers."""
        if self.rope_type == "dynamic":
            if seq_len > self.max_seq_len_cached:  # grow (sticky until reset)
                self.inv_freq, self.attention_scaling = self._compute(seq_len)
                self.max_seq_len_cached = seq_len
            elif seq_len < self.max_pos and self.max_seq_len_cached > self.max_pos:  # reset
                self.inv_freq, self.max_seq_len_cached = self.original_inv_freq, self.max_pos
        elif self.rope_type == "longrope":
            self.inv_freq, _ = self._compute(seq_len)

    def cos_sin(self, position_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """position_ids [B, T] -> cos, sin [B, T, HD/2], angles as a float32 product."""
        self.update(int(position_ids.max()) + 1)
        angles = position_ids.astype(f32)[..., None] * self.inv_freq  # [B, T, HD/2]
        scale = f32(self.attention_scaling)
        return (np.cos(angles) * scale).astype(f32), (np.sin(angles) * scale).astype(f32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """Rotate pairs of x [B, T, H, HD] by the per-position angles (cos, sin [B, T, HD/2]).

    half-split (Llama): pair i is (x[i], x[i + HD/2]);
    interleaved (Cohere): pair i is (x[2i], x[2i+1]).
    """
    half = x.shape[-1] // 2
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]          # [B, T, H, HD/2] each
    else:
        a, b = x[..., :half], x[..., half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    rotated_a = a * c - b * s
    rotated_b = b * c + a * s
    out = np.empty_like(x)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = rotated_a, rotated_b
    else:
        out[..., :half], out[..., half:] = rotated_a, rotated_b
    return out
