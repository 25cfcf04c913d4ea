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


def attention_probs(q: np.ndarray, k: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """q [B, T, H, HD], k [B, S, KV, HD] (float32, or bfloat16 bits), mask [B, T, S] -> softmax weights
    [B, H, T, S] float32.

    GQA: query head h reads kv head h // (H // KV) (repeat-interleave, not tile).
    A query row with no visible key (a pad query) is all zeros, like sdpa. A row with a NaN or +inf
    score among its visible keys is all NaN, like torch's softmax: a NaN never turns into an answer.
    """
    k = widen(k)                                                  # a bfloat16 KV cache holds uint16 bits
    n_rep = q.shape[2] // k.shape[2]
    k = np.repeat(k, n_rep, axis=2)                               # [B, S, H, HD]
    scores = np.einsum("bthd,bshd->bhts", q, k) * np.float32(scale)  # [B, H, T, S]
    visible = mask[:, None, :, :]                                  # [B, 1, T, S]
    scores = np.where(visible, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)                   # NaN if any visible score is NaN
    row_max = np.where(row_max == -np.inf, 0.0, row_max)           # fully masked rows: exp(-inf) = 0
    with np.errstate(invalid="ignore"):                            # inf - inf: NaN, as torch's softmax
        weights = np.exp(scores - row_max)
        denom = weights.sum(axis=-1, keepdims=True)                # 0 only for a fully masked row
        probs = np.divide(weights, denom, out=np.zeros_like(weights), where=denom != 0)
    return probs.astype(np.float32, copy=False)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """q [B, T, H, HD], k/v [B, S, KV, HD] (float32, or bfloat16 bits), mask [B, T, S] -> [B, T, H, HD].

    The probabilities of `attention_probs` times the values: query head h reads kv head
    h // (H // KV). A query row with no visible key (a pad query) outputs zeros.
    """
    probs = attention_probs(q, k, mask, scale)                     # [B, H, T, S]
    v = np.repeat(widen(v), q.shape[2] // v.shape[2], axis=2)      # [B, S, H, HD]
    out = np.einsum("bhts,bshd->bthd", probs, v)                   # [B, T, H, HD]
    return out.astype(np.float32, copy=False)


def probs_by_token(probs: np.ndarray, key_positions: np.ndarray, length: int) -> np.ndarray:
    """probs [B, H, T, S] over key slots, key_positions [S] the token index each slot holds
    (-1 = an empty ring slot; out.attention_key_positions[i]) -> [B, H, T, length] in token order.

    A sliding layer's cache is a ring (docs/semantics.md section 6): its slots are not in token
    order. transformers' weights cover the last S' tokens in order, so they are the last S'
    columns of this. Empty slots have weight 0 and are dropped.
    """
    out = np.zeros(probs.shape[:3] + (length,), dtype=np.float32)
    held = key_positions >= 0
    out[..., key_positions[held]] = probs[..., held]                # slots hold distinct tokens
    return out
