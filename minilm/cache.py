"""KV cache: a growing buffer for global layers, a ring buffer of W slots for sliding layers.

Each layer's `update(k, v, query_index)` stores the new keys/values and returns
what this forward attends over: keys, values [B, S, KV, HD] and key_index [S],
the token index of every key slot (-1 = empty). Masks are built from token
indices, so the order of slots in the ring does not matter.

dtype="bfloat16" stores keys and values as bfloat16 bits (uint16), half the
memory of float32; attention widens them as it reads and accumulates in float32.

Memory follows the tokens actually seen, never a number from config.json alone:
both kinds of buffer start small and double as needed, and a ring stops growing
at W slots. A config's sliding_window of 10**9 thus costs what the tokens cost
(generation stops at max_position_embeddings), not a 119 GiB ring at the first
token.
"""
from __future__ import annotations

import numpy as np

from .formats.bfloat16 import to_bfloat16

CACHE_DTYPES = {"float32": np.float32, "bfloat16": np.uint16}


def storage(dtype: str):
    """-> (NumPy storage dtype, float32 [...] -> stored [...]) for a cache dtype."""
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype={dtype!r} must be one of {', '.join(CACHE_DTYPES)}")
    return CACHE_DTYPES[dtype], (to_bfloat16 if dtype == "bfloat16" else (lambda a: a))


class FullLayerCache:
    """Keeps every token; capacity doubles as the sequence grows."""

    def __init__(self, backend, batch: int, kv_heads: int, head_dim: int, dtype: str = "float32",
                 capacity: int = 64):
        self.backend, self.length = backend, 0
        self.dtype, self.store = storage(dtype)
        self.keys = self._zeros(batch, capacity, kv_heads, head_dim)
        self.values = self._zeros(batch, capacity, kv_heads, head_dim)

    def _zeros(self, *shape):
        return self.backend.asarray(np.zeros(shape, dtype=self.dtype))

    def _grow(self, needed: int) -> None:
        capacity = self.keys.shape[1]
        while capacity < needed:
            capacity *= 2
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = self._zeros(old.shape[0], capacity, *old.shape[2:])
            new[:, :self.length] = old[:, :self.length]
            setattr(self, name, new)

    def update(self, k, v, query_index: np.ndarray):
        T = k.shape[1]
        k, v = self.store(k), self.store(v)
        if self.length + T > self.keys.shape[1]:
            self._grow(self.length + T)
        self.keys[:, self.length:self.length + T] = k
        self.values[:, self.length:self.length + T] = v
        self.length += T
        key_index = np.arange(self.length)
        return self.keys[:, :self.length], self.values[:, :self.length], key_index


class SlidingLayerCache:
    """A ring of W slots: memory is bounded by the window, not the sequence.

    Token t lives in slot t % W. A query at index i needs keys i-W+1..i, so a
    single-token decode step writes first and attends over the ring; a chunk of
    T > 1 tokens attends over ring + chunk, then keeps the chunk's last W tokens.
    Until W tokens have been seen the ring holds fewer slots (token t < capacity
    sits in slot t = t % W), doubling as tokens arrive.
    """

    def __init__(self, backend, batch: int, kv_heads: int, head_dim: int, window: int, dtype: str = "float32",
                 capacity: int = 64):
        self.backend, self.window = backend, window
        self.dtype, self.store = storage(dtype)
        capacity = min(capacity, window)
        zeros = np.zeros((batch, capacity, kv_heads, head_dim), dtype=self.dtype)
        self.keys, self.values = backend.asarray(zeros), backend.asarray(zeros.copy())
        self.slot_index = np.full(capacity, -1, dtype=np.int64)  # token index held by each slot

    def _grow(self, last_index: int) -> None:
        """Enough slots for tokens 0..last_index (all of them until the ring reaches W)."""
        capacity = self.slot_index.shape[0]
        if capacity == self.window or last_index < capacity:
            return
        while capacity <= last_index and capacity < self.window:
            capacity = min(2 * capacity, self.window)
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = self.backend.asarray(np.zeros((old.shape[0], capacity, *old.shape[2:]), dtype=self.dtype))
            new[:, :old.shape[1]] = old
            setattr(self, name, new)
        self.slot_index = np.concatenate([self.slot_index, np.full(capacity - len(self.slot_index), -1)])

    def _write(self, k, v, query_index: np.ndarray) -> None:
        self._grow(int(query_index[-1]))
        for t in range(max(0, len(query_index) - self.window), len(query_index)):
            slot = query_index[t] % self.window
            self.keys[:, slot] = k[:, t]
            self.values[:, slot] = v[:, t]
            self.slot_index[slot] = query_index[t]

    def update(self, k, v, query_index: np.ndarray):
        T = k.shape[1]
        k, v = self.store(k), self.store(v)
        if T == 1:
            self._write(k, v, query_index)
            return self.keys, self.values, self.slot_index.copy()
        W = self.slot_index.shape[0]                      # the ring as it is (W slots once full)
        B, _, KV, HD = k.shape
        keys = self.backend.asarray(np.zeros((B, W + T, KV, HD), dtype=self.dtype))
        values = self.backend.asarray(np.zeros((B, W + T, KV, HD), dtype=self.dtype))
        keys[:, :W], keys[:, W:] = self.keys, k           # [B, W + T, KV, HD]
        values[:, :W], values[:, W:] = self.values, v
        key_index = np.concatenate([self.slot_index, query_index])
        self._write(k, v, query_index)
        return keys, values, key_index


class KVCache:
    """One cache per layer, plus the padding mask and length of everything seen so far."""

    def __init__(self, windows: list, kv_heads: int, head_dim: int, backend, batch_size: int,
                 dtype: str = "float32"):
        """windows: per layer, the sliding window W or None (full attention); dtype: "float32" | "bfloat16"."""
        self.batch_size = batch_size
        self.layout = (tuple(windows), kv_heads, head_dim)   # what a model checks before using this cache
        self.seq_len = 0
        self.attention_mask = np.zeros((batch_size, 0), dtype=bool)  # [B, seq_len]
        args = (backend, batch_size, kv_heads, head_dim)
        self.layers = [SlidingLayerCache(*args, w, dtype) if w else FullLayerCache(*args, dtype) for w in windows]
        self.bytes_per_token = sum(2 * kv_heads * head_dim * np.dtype(storage(dtype)[0]).itemsize
                                   for w in windows if not w)    # what grows: full layers (sliding ones stop at W)

    def stored_lengths(self) -> list[int]:
        """How many tokens each layer holds (a sliding layer holds at most W)."""
        return [int(c.length) if isinstance(c, FullLayerCache) else int((c.slot_index >= 0).sum())
                for c in self.layers]
