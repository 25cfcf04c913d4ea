"""Masks and scaled dot-product attention with GQA.

Visibility (docs/semantics.md sections 4.3, 6.1): query at token index i sees key
j iff j <= i, key j is not padding, and for sliding layers j > i - W.
Token indices are cache positions, not position_ids.
"""
import numpy as np

from ..formats.bfloat16 import widen


def attention_mask(query_index: np.ndarray, key_index: np.ndarray, key_valid: np.ndarray,
                   window: int | None = None) -> np.ndarray:
    """query_index [T], key_index [S] (-1 = empty slot), key_valid [B, S] -> visible [B, T, S] bool."""
    q = query_index[:, None]                     # [T, 1]
    k = key_index[None, :]                       # [1, S]
    visible = (k >= 0) & (k <= q)                # causal; empty ring slots never visible
    if window is not None:
        visible &= k > q - window                # W keys including the query itself
    return visible[None, :, :] & key_valid[:, None, :].astype(bool)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """q [B, T, H, HD], k/v [B, S, KV, HD] (float32, or bfloat16 bits), mask [B, T, S] -> [B, T, H, HD].

    GQA: query head h reads kv head h // (H // KV) (repeat-interleave, not tile).
    A query row with no visible key (a pad query) outputs zeros.
    """
    k, v = widen(k), widen(v)                                     # a bfloat16 KV cache holds uint16 bits
    n_rep = q.shape[2] // k.shape[2]
    k = np.repeat(k, n_rep, axis=2)                               # [B, S, H, HD]
    v = np.repeat(v, n_rep, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) * np.float32(scale)  # [B, H, T, S]
    visible = mask[:, None, :, :]                                  # [B, 1, T, S]
    scores = np.where(visible, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)        # fully masked rows
    weights = np.exp(scores - row_max)                             # exp(-inf) = 0
    denom = weights.sum(axis=-1, keepdims=True)
    probs = np.divide(weights, denom, out=np.zeros_like(weights), where=denom > 0)
    out = np.einsum("bhts,bshd->bthd", probs.astype(np.float32), v)  # [B, T, H, HD]
    return out.astype(np.float32, copy=False)
