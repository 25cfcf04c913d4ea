"""Choosing the next token: transformers' logits processors, argmax and sampling.

Order and semantics follow transformers' `_sample` (docs/semantics.md
section 8): repetition penalty, then (sampling only) temperature, top-k,
top-p, min-p; then argmax or a draw from softmax.  scores are [B, V] float32.
"""
import numpy as np

NEG_INF = np.float32(-np.inf)


def repetition_penalty(scores: np.ndarray, input_ids: np.ndarray, penalty: float,
                       ignore_mask: np.ndarray | None = None) -> np.ndarray:
    """Divide positive / multiply negative scores of every token already present in input_ids [B, L].

    ignore_mask [B, L] True marks positions to skip (left padding, as in transformers 5.x).
    """
    out = scores.copy()
    for b in range(scores.shape[0]):
        ids = input_ids[b] if ignore_mask is None else input_ids[b][~ignore_mask[b]]
        seen = np.unique(ids)
        s = out[b, seen]
        out[b, seen] = np.where(s < 0, s * np.float32(penalty), s / np.float32(penalty))
    return out


def temperature(scores: np.ndarray, t: float) -> np.ndarray:
    return scores / np.float32(t)


def top_k_filter(scores: np.ndarray, k: int, min_keep: int = 1) -> np.ndarray:
    """Keep scores >= the k-th largest (ties with it are kept); others -> -inf."""
    k = min(max(k, min_keep), scores.shape[-1])
    kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1:k]   # [B, 1]
    return np.where(scores < kth, NEG_INF, scores)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def top_p_filter(scores: np.ndarray, p: float, min_keep: int = 1) -> np.ndarray:
    """Nucleus: drop the low tail whose cumulative probability is <= 1 - p."""
    order = np.argsort(scores, axis=-1, kind="stable")           # ascending
    sorted_scores = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(sorted_scores), axis=-1)
    remove_sorted = cumulative <= np.float32(1 - p)
    remove_sorted[:, -min_keep:] = False                          # always keep the top min_keep
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, NEG_INF, scores)


def min_p_filter(scores: np.ndarray, min_p: float, min_keep: int = 1) -> np.ndarray:
    """Drop tokens whose probability is below min_p times the top probability."""
    probs = softmax(scores)
    remove = probs < np.float32(min_p) * probs.max(axis=-1, keepdims=True)
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :min_keep]  # the most probable
    np.put_along_axis(remove, order, False, axis=-1)
    return np.where(remove, NEG_INF, scores)


def argmax(scores: np.ndarray) -> np.ndarray:
    """[B, V] -> [B] int64, the first index on ties (like torch.argmax)."""
    return np.argmax(scores, axis=-1).astype(np.int64)


def sample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one token per row from softmax(scores) by inverse CDF with one uniform per row."""
    probs = softmax(scores.astype(np.float64))
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random((scores.shape[0], 1)) * cdf[:, -1:]
    picks = (cdf <= u).sum(axis=-1)   # first index whose cdf exceeds u
    return np.minimum(picks, scores.shape[-1] - 1).astype(np.int64)
