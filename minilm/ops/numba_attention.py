"""Numba kernel for attention.py: masked softmax attention with GQA, prefill and decode.

Idea. One (batch, query token, head) row at a time: scores against the visible
keys only (masked keys cost nothing, so causal prefill does half the work), a
max-shifted softmax and the weighted sum of values, all in float32. Query head
h reads kv head h // (H // KV); a row with no visible key outputs zeros and a
row with a NaN or +inf score outputs NaN, like the reference. Rows are split
across threads unless the whole call is smaller than a thread launch (a decode
step over a short cache).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_math import FASTMATH, as_float32, exp_f32

SERIAL_MAX_WORK = 1 << 14    # B*T*H*S*HD multiply-adds below which threads do not pay


@njit(error_model="numpy", fastmath=FASTMATH, inline="always", cache=True)
def masked_scores(q, k, b, kv, mask, scale, scores):
    """q [HD], k [B, S, KV, HD] at batch b and kv head kv, mask [S] -> scores [S] = q . k_s * scale on
    visible keys, -inf on masked ones; returns the row max (-inf when nothing is visible, NaN when a
    score is NaN)."""
    S, HD = k.shape[1], k.shape[3]
    row_max = np.float32(-np.inf)
    for s in range(S):                                   # scores of the visible keys only
        if mask[s]:
            acc = np.float32(0.0)
            for d in range(HD):
                acc += q[d] * as_float32(k[b, s, kv, d])
            score = acc * scale
            scores[s] = score
            if score > row_max or score != score:        # a NaN max sticks (max() would drop it)
                row_max = score
        else:
            scores[s] = -np.inf                          # masked keys cost nothing
    return row_max


@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def attention_row(q, k, v, b, kv, mask, scale, out):
    """q [HD], k/v [B, S, KV, HD] read at batch b and kv head kv, mask [S] -> out [HD]."""
    S, HD = k.shape[1], k.shape[3]
    scores = np.empty(S, dtype=np.float32)
    row_max = masked_scores(q, k, b, kv, mask, scale, scores)
    if row_max == -np.inf:                               # no visible key: zeros
        out[:] = 0.0
        return
    if not row_max < np.inf:                             # a NaN or +inf score: NaN, as torch's softmax
        out[:] = np.nan
        return
    denom = np.float32(0.0)
    for s in range(S):                                   # softmax numerators; exp(-inf) = 0 (vectorised)
        scores[s] = exp_f32(scores[s] - row_max)
        denom += scores[s]
    weighted = np.zeros(HD, dtype=np.float32)            # a local sum: LLVM need not fear aliasing out
    for s in range(S):                                   # weighted sum of the visible values
        if mask[s]:
            for d in range(HD):
                weighted[d] += scores[s] * as_float32(v[b, s, kv, d])
    for d in range(HD):
        out[d] = weighted[d] / denom


@njit(error_model="numpy", fastmath=FASTMATH, cache=True)
def probs_row(q, k, b, kv, mask, scale, out):
    """The softmax weights of one query row: q [HD], k [B, S, KV, HD], mask [S] -> out [S]."""
    row_max = masked_scores(q, k, b, kv, mask, scale, out)    # scores straight into out
    if row_max == -np.inf:                               # no visible key: all zeros
        out[:] = 0.0
        return
    if not row_max < np.inf:                             # a NaN or +inf score: NaN, as torch's softmax
        out[:] = np.nan
        return
    denom = np.float32(0.0)
    for s in range(out.size):
        out[s] = exp_f32(out[s] - row_max)               # exp(-inf) = 0 on masked keys
        denom += out[s]
    for s in range(out.size):
        out[s] = out[s] / denom


@njit(error_model="numpy", parallel=True, cache=True)
def attention_rows(q, k, v, mask, scale, out):
    """q [B, T, H, HD], k/v [B, S, KV, HD], mask [B, T, S] -> out [B, T, H, HD], rows over threads.

    Causal rows grow in cost with t, so a thread takes query tokens in pairs (t, T-1-t): every
    pair costs about the same, and an even split of the pairs is an even split of the work."""
    B, T, H, _ = q.shape
    n_rep = H // k.shape[2]
    pairs = (T + 1) // 2
    for job in prange(B * pairs * H):
        b, p, h = job // (pairs * H), (job // H) % pairs, job % H
        attention_row(q[b, p, h], k, v, b, h // n_rep, mask[b, p], scale, out[b, p, h])
        t = T - 1 - p
        if t != p:                                           # the middle token of an odd T: once
            attention_row(q[b, t, h], k, v, b, h // n_rep, mask[b, t], scale, out[b, t, h])


@njit(error_model="numpy", cache=True)
def attention_rows_serial(q, k, v, mask, scale, out):
    """The same loop on the calling thread."""
    B, T, H, _ = q.shape
    n_rep = H // k.shape[2]
    for row in range(B * T * H):
        b, t, h = row // (T * H), (row // H) % T, row % H
        attention_row(q[b, t, h], k, v, b, h // n_rep, mask[b, t], scale, out[b, t, h])


def _stored(kv):
    """K/V as stored: float32, or bfloat16 bits (uint16) that the kernel widens as it reads."""
    kv = np.asarray(kv)
    return kv if kv.dtype in (np.float32, np.uint16) else kv.astype(np.float32)


def attention(q, k, v, mask, scale):
    """Same signature as attention.attention: -> [B, T, H, HD]."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    out = np.empty_like(q)
    args = (q, _stored(k), _stored(v),                                              # cache views: any layout
            np.ascontiguousarray(mask, dtype=np.bool_), np.float32(scale), out)
    if q.size * k.shape[1] < SERIAL_MAX_WORK:
        attention_rows_serial(*args)
    else:
        attention_rows(*args)
    return out


@njit(error_model="numpy", parallel=True, cache=True)
def probs_rows(q, k, mask, scale, out):
    """q [B, T, H, HD], k [B, S, KV, HD], mask [B, T, S] -> out [B, H, T, S], rows over threads."""
    B, T, H, _ = q.shape
    n_rep = H // k.shape[2]
    for row in prange(B * T * H):
        b, t, h = row // (T * H), (row // H) % T, row % H
        probs_row(q[b, t, h], k, b, h // n_rep, mask[b, t], scale, out[b, h, t])


def attention_probs(q, k, mask, scale):
    """Same signature as attention.attention_probs: -> [B, H, T, S] float32.
    Only called when someone asks for the weights (output_attentions, the tape): no serial variant."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    k = _stored(k)
    B, T, H, _ = q.shape
    out = np.empty((B, H, T, k.shape[1]), dtype=np.float32)
    probs_rows(q, k, np.ascontiguousarray(mask, dtype=np.bool_), np.float32(scale), out)
    return out
