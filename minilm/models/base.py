"""What the three families share: embedding, attention and MLP sublayers, the
forward loop, the LM / classification heads and the loss.

One `forward` serves prefill (T > 1) and decode (T = 1). Family modules
(llama.py, cohere.py, cohere2.py) supply the norm and the block wiring.
Shape legend: B batch, T new tokens, S keys, D hidden, H heads, KV kv heads,
HD head dim, V vocab.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from ..cache import KVCache
from ..weights import check_unchanged
from ..ops.attention import attention_mask
from ..ops.rope import RotaryEmbedding
from .debugging import debug_hook


@dataclass
class ModelOutput:
    logits: np.ndarray                 # [B, T, V] (causal LM) or [B, num_labels] (classifier)
    hidden_states: tuple | None = None
    loss: float | None = None
    tape: dict | None = None
    attentions: tuple | None = None    # output_attentions: per layer, softmax weights [B, H, T, S] float32
    attention_key_positions: tuple | None = None  # per layer [S]: token index of each key slot (-1 = empty)


@dataclass
class ForwardContext:
    """Per-call values every layer needs (computed once per forward)."""
    cos: np.ndarray | None             # [B, T, HD/2]
    sin: np.ndarray | None
    query_index: np.ndarray            # [T] token index of each new token
    mask_2d: np.ndarray                # [B, past + T] bool, False = padding
    cache: KVCache | None
    tape: dict | None
    masks: dict = field(default_factory=dict)  # memo: (window, key indices) -> mask
    on_record: Callable | None = None  # debugging hook (stop_at, on_record): called with (name, value)
    attentions: list | None = None     # output_attentions: (probs, key_index) per layer
    input_ids: np.ndarray | None = None  # [B, T] this call's tokens: in scope wherever ctx is, for a debugger

    @property
    def wants_probs(self) -> bool:
        """Attention weights are computed only when someone looks at them."""
        return self.attentions is not None or self.tape is not None or self.on_record is not None


class TensorSpec(NamedTuple):
    """One tensor a checkpoint must hold: its shape (PyTorch layout) and what kind of tensor it is."""
    shape: tuple
    kind: str        # "linear" (a projection), "head" (lm_head / score), "embedding", "vector" (norms, biases)


MATRIX_KINDS = ("linear", "head", "embedding")
MAX_MASK_ELEMENTS = 2**30        # one forward's [B, T, S] bool mask: 1 GiB (T = S = 32768)
MAX_ATTENTION_BYTES = 4 * 2**30  # output_attentions: every layer's [B, H, T, S] float32 weights


def shortest_float32(value: float) -> float:
    """GGUF stores float32: 1e-5 arrives as 9.999999747378752e-06; its shortest float32 spelling
    (1e-05) is what the original config said and is the same float32 number."""
    return float(str(np.float32(value)))


class DecoderModel:
    """The decoder every family shares; a family module subclasses it and states its facts:

    model_type        the config.json `model_type` this class runs
    config_defaults   values transformers assumes for keys a config.json may omit
    norm_eps_key      the config key of the norm epsilon
    interleaved_rope  RoPE pairs (2i, 2i+1) instead of (i, i + HD/2)
    family_config()   family-only config fields (logit_scale, qk-norm, layer types, ...)
    layer_tensors()   the family's per-layer tensors, beside the shared ones
    norm(), decoder_layer(), qk_norm(), layer_uses_rope(), layer_window(): the block itself
    gguf_architecture, gguf_config(), gguf_permuted_heads(): how llama.cpp's GGUF files store it
    """
    model_type = "base"
    mapped_files: dict = {}            # memory-mapped weight files -> identity at load (checked per forward)
    scan_mapped_weights = None         # set by minilm.load: raises naming a mapped tensor with NaN/Inf
    cache_dtype = "float32"            # KV cache storage: "float32" or "bfloat16"
    config_defaults: dict = {}
    norm_eps_key = "rms_norm_eps"
    interleaved_rope = False

    def __init__(self, config, weights: dict, backend):
        self.config, self.backend = config, backend
        self.weights = weights             # HF tensor names -> backend arrays / formats.Weight
        self.rotary = RotaryEmbedding(config.rope_parameters, config.head_dim, config.max_position_embeddings)

    # --- family facts (class level: config parsing, loading and tools read them without weights) ---
    @classmethod
    def family_config(cls, cfg: dict, source: str) -> dict:
        """ModelConfig fields only this family has, from the merged config dict."""
        return {}

    @classmethod
    def tensor_specs(cls, config) -> dict[str, TensorSpec]:
        """Every tensor the checkpoint must hold, in model order: name -> TensorSpec."""
        D, V = config.hidden_size, config.vocab_size
        specs = {"model.embed_tokens.weight": TensorSpec((V, D), "embedding")}
        for i in range(config.num_hidden_layers):
            specs.update(cls.shared_layer_tensors(config, i))
            specs.update(cls.layer_tensors(config, i))
        specs["model.norm.weight"] = TensorSpec((D,), "vector")
        if config.is_sequence_classifier:
            specs["score.weight"] = TensorSpec((config.num_labels, D), "head")
        else:
            specs["lm_head.weight"] = TensorSpec((V, D), "head")
        return specs

    @staticmethod
    def shared_layer_tensors(config, i: int) -> dict[str, TensorSpec]:
        """The input norm, attention and SwiGLU MLP of layer i (with biases where the config has them)."""
        D, F = config.hidden_size, config.intermediate_size
        H, KV, HD = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        p = f"model.layers.{i}"
        projections = {"self_attn.q_proj": (H * HD, D), "self_attn.k_proj": (KV * HD, D),
                       "self_attn.v_proj": (KV * HD, D), "self_attn.o_proj": (D, H * HD),
                       "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
        specs = {f"{p}.input_layernorm.weight": TensorSpec((D,), "vector")}
        for name, shape in projections.items():
            specs[f"{p}.{name}.weight"] = TensorSpec(shape, "linear")
            has_bias = config.attention_bias if name.startswith("self_attn") else config.mlp_bias
            if has_bias:
                specs[f"{p}.{name}.bias"] = TensorSpec(shape[:1], "vector")
        return specs

    @classmethod
    def layer_tensors(cls, config, i: int) -> dict[str, TensorSpec]:
        return {}

    # --- GGUF (llama.cpp) facts: minilm/gguf_file.py reads them ----------------
    gguf_architecture: str | None = None   # general.architecture of the family's GGUF files

    @classmethod
    def gguf_config(cls, key, tensor_names: set) -> dict:
        """Family-only config.json entries from GGUF metadata (key(name, default) reads `{arch}.{name}`)."""
        return {}

    @classmethod
    def gguf_metadata(cls, config) -> dict:
        """The inverse of gguf_config: family-only `{arch}.*` entries a writer stores."""
        return {}

    @classmethod
    def gguf_permuted_heads(cls, config) -> dict[str, int]:
        """{projection: heads} whose rows llama.cpp's converter permuted (undone at load)."""
        return {}

    @classmethod
    def layer_uses_rope(cls, config, i: int) -> bool:
        return True

    @classmethod
    def layer_window(cls, config, i: int) -> int | None:
        """Sliding layers see the last `sliding_window` tokens (the query included); others see all."""
        return config.sliding_window if config.layer_types[i] == "sliding_attention" else None

    # --- family hooks -------------------------------------------------------
    def norm(self, x, weight):
        raise NotImplementedError

    def decoder_layer(self, i: int, x, ctx: ForwardContext):
        raise NotImplementedError

    def qk_norm(self, i: int, q, k):
        return q, k

    # --- helpers ------------------------------------------------------------
    def w(self, name: str):
        return self.weights.get(name)

    def record(self, ctx: ForwardContext, name: str, value) -> None:
        # The tape (named intermediates as numpy arrays) and the debugging hook; a no-op when both are off.
        if ctx.tape is not None:
            ctx.tape[name] = np.array(self.backend.to_numpy(value))
        if ctx.on_record is not None:
            ctx.on_record(name, value)

    def linear(self, x, prefix: str):
        return self.backend.linear(x, self.w(prefix + ".weight"), self.w(prefix + ".bias"))

    # --- sublayers ----------------------------------------------------------
    def self_attention(self, i: int, x, ctx: ForwardContext):
        """x [B, T, D] (already normed) -> [B, T, D]"""
        cfg, ops, p = self.config, self.backend, f"model.layers.{i}.self_attn"
        B, T, _ = x.shape
        H, KV, HD = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.linear(x, p + ".q_proj").reshape(B, T, H, HD)
        k = self.linear(x, p + ".k_proj").reshape(B, T, KV, HD)
        v = self.linear(x, p + ".v_proj").reshape(B, T, KV, HD)
        self.record(ctx, f"layers.{i}.attn.q", q)
        self.record(ctx, f"layers.{i}.attn.k", k)
        self.record(ctx, f"layers.{i}.attn.v", v)
        q, k = self.qk_norm(i, q, k)
        if cfg.use_qk_norm:
            self.record(ctx, f"layers.{i}.attn.q_norm", q)
            self.record(ctx, f"layers.{i}.attn.k_norm", k)
        if self.layer_uses_rope(cfg, i):
            q = ops.apply_rope(q, ctx.cos, ctx.sin, self.interleaved_rope)
            k = ops.apply_rope(k, ctx.cos, ctx.sin, self.interleaved_rope)
            self.record(ctx, f"layers.{i}.attn.q_rope", q)
            self.record(ctx, f"layers.{i}.attn.k_rope", k)
        if ctx.cache is not None:
            keys, values, key_index = ctx.cache.layers[i].update(k, v, ctx.query_index)
        else:
            keys, values, key_index = k, v, ctx.query_index
        mask = self.layer_mask(ctx, key_index, self.layer_window(cfg, i))                 # [B, T, S]
        self.record(ctx, f"layers.{i}.attn.mask", mask)
        if ctx.wants_probs:                  # a separate op: the attention kernels never materialise them
            probs = ops.attention_probs(q, keys, mask, HD ** -0.5)             # [B, H, T, S]
            self.record(ctx, f"layers.{i}.attn.probs", probs)
            if ctx.attentions is not None:
                ctx.attentions.append((probs, key_index))
        out = ops.attention(q, keys, values, mask, HD ** -0.5)                 # [B, T, H, HD]
        out = out.reshape(B, T, H * HD)
        self.record(ctx, f"layers.{i}.attn.context", out)
        out = self.linear(out, p + ".o_proj")
        self.record(ctx, f"layers.{i}.attn.out", out)
        return out

    def layer_mask(self, ctx: ForwardContext, key_index: np.ndarray, window: int | None):
        """The [B, T, S] visibility mask; layers with the same keys and window share one per forward."""
        memo_key = (window, key_index.tobytes())
        if memo_key not in ctx.masks:
            key_valid = ctx.mask_2d[:, np.maximum(key_index, 0)]                 # [B, S]
            mask = attention_mask(ctx.query_index, key_index, key_valid, window)
            ctx.masks[memo_key] = self.backend.asarray(mask)
        return ctx.masks[memo_key]

    def mlp(self, i: int, x, ctx: ForwardContext):
        """SwiGLU: down(silu(gate(x)) * up(x)), x [B, T, D] -> [B, T, D]"""
        p = f"model.layers.{i}.mlp"
        gate = self.linear(x, p + ".gate_proj")               # [B, T, F]
        up = self.linear(x, p + ".up_proj")
        act = self.backend.swiglu(gate, up)
        self.record(ctx, f"layers.{i}.mlp.gate", gate)
        self.record(ctx, f"layers.{i}.mlp.up", up)
        self.record(ctx, f"layers.{i}.mlp.act", act)
        out = self.linear(act, p + ".down_proj")
        self.record(ctx, f"layers.{i}.mlp.out", out)
        return out

    def generate(self, input_ids, **kwargs):
        """Token ids [B, T + new]; arguments as in `minilm.generate.generate`."""
        from ..generate import generate
        return generate(self, input_ids, **kwargs)

    # --- the forward pass ---------------------------------------------------
    def new_cache(self, batch_size: int = 1, dtype: str | None = None) -> KVCache:
        """dtype: "float32" or "bfloat16" (default: the cache_dtype the model was loaded with)."""
        cfg = self.config
        windows = [self.layer_window(cfg, i) for i in range(cfg.num_hidden_layers)]
        return KVCache(windows, cfg.num_key_value_heads, cfg.head_dim, self.backend, batch_size,
                       dtype or self.cache_dtype)

    def __call__(self, input_ids, attention_mask=None, cache: KVCache | None = None, position_ids=None,
                 output_hidden_states: bool = False, labels=None, tape: bool | dict = False,
                 output_attentions: bool = False, stop_at: str | None = None, on_record=None,
                 logits_to_keep: int = 0) -> ModelOutput:
        """One forward. output_attentions: per-layer softmax weights in out.attentions (docs/tape.md);
        stop_at: open the debugger when that tape name is computed; on_record(name, value): called at
        every tape name (docs/debugging.md); logits_to_keep: compute the LM head for the last N
        positions only (0: all), like transformers: a prompt's prefill needs only the last one."""
        cfg, ops = self.config, self.backend
        if self.mapped_files:
            check_unchanged(self.mapped_files)
        ids = self._check_ids(input_ids)
        B, T = ids.shape
        if labels is not None:                                  # checked before the forward's work
            labels = (integer_array(labels, "labels") if cfg.is_sequence_classifier
                      else check_labels(labels, ids.shape, cfg.vocab_size))
        past = cache.seq_len if cache is not None else 0
        if cache is not None:
            self._check_cache(cache, B)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (int, np.integer)) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep={logits_to_keep!r} must be an integer >= 0 (0: every position)")
        self._check_attention_size(B, T, past + T, output_attentions)
        mask_2d = self._full_mask(attention_mask, cache, B, T, past)
        if position_ids is None:
            # transformers' plain forward: arange + past for every row, padding ignored.
            position_ids = np.broadcast_to(np.arange(past, past + T), (B, T))
        position_ids = self._check_positions(position_ids, B, T)
        cos = sin = None
        if any(self.layer_uses_rope(cfg, i) for i in range(cfg.num_hidden_layers)):
            cos, sin = self.rotary.cos_sin(position_ids)
            cos, sin = ops.asarray(cos), ops.asarray(sin)
        ctx = ForwardContext(cos, sin, np.arange(past, past + T), mask_2d, cache,
                             tape if isinstance(tape, dict) else ({} if tape else None),
                             on_record=debug_hook(self, stop_at, on_record),
                             attentions=[] if output_attentions else None, input_ids=ids)

        x = ops.embedding(ops.asarray(ids), self.w("model.embed_tokens.weight"))  # [B, T, D]
        self.record(ctx, "embed", x)
        hidden_states = [x] if output_hidden_states else None
        for i in range(cfg.num_hidden_layers):
            x = self.decoder_layer(i, x, ctx)
            self.record(ctx, f"layers.{i}.out", x)
            if output_hidden_states and i < cfg.num_hidden_layers - 1:
                hidden_states.append(x)
        x = self.norm(x, self.w("model.norm.weight"))
        self.record(ctx, "final_norm", x)
        if output_hidden_states:
            hidden_states.append(x)  # the last entry is the final-normed output, like transformers
        if cache is not None:
            cache.seq_len += T
            cache.attention_mask = mask_2d

        if logits_to_keep and not cfg.is_sequence_classifier:
            x = x[:, -logits_to_keep:]                                           # [B, N, D]
        out = self._head(x, ids, ctx)
        loss = self._loss(out, labels) if labels is not None else None
        hidden = tuple(np.asarray(ops.to_numpy(h)) for h in hidden_states) if output_hidden_states else None
        attentions = positions = None
        if output_attentions:
            attentions = tuple(np.asarray(ops.to_numpy(p), dtype=np.float32) for p, _ in ctx.attentions)
            positions = tuple(np.array(index) for _, index in ctx.attentions)
        return ModelOutput(logits=out, hidden_states=hidden, loss=loss, tape=ctx.tape, attentions=attentions,
                           attention_key_positions=positions)

    def _head(self, x, ids: np.ndarray, ctx: ForwardContext) -> np.ndarray:
        cfg, ops = self.config, self.backend
        if cfg.is_sequence_classifier:
            scores = np.asarray(ops.to_numpy(ops.linear(x, self.w("score.weight"), None)))  # [B, T, labels]
            self._check_finite(scores)
            return scores[np.arange(ids.shape[0]), self._pooled_index(ids)]
        logits = ops.linear(x, self.w("lm_head.weight"), None)                 # [B, T, V]
        if cfg.logit_scale != 1.0:
            logits = ops.scale_logits(logits, cfg.logit_scale)                  # Cohere
        logits = np.asarray(ops.to_numpy(logits), dtype=np.float32)
        self._check_finite(logits)
        self.record(ctx, "logits", logits)
        return logits

    def _check_finite(self, logits: np.ndarray) -> None:
        """A NaN or Inf in any weight a forward uses reaches its logits (attention and every kernel
        propagate NaN): only then are the memory-mapped files scanned, to name the tensor. One isfinite
        over the logits per forward; with finite weights the logits are returned for the caller's
        checks (generate stops at the step, perplexity refuses the loss)."""
        if self.scan_mapped_weights is not None and not np.isfinite(logits).all():
            self.scan_mapped_weights()

    def _pooled_index(self, ids: np.ndarray) -> np.ndarray:
        """LlamaForSequenceClassification pools the rightmost non-pad token of each row."""
        pad = self.config.pad_token_id
        if pad is None:
            if ids.shape[0] != 1:
                raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
            return np.array([ids.shape[1] - 1])
        positions = np.arange(ids.shape[1]) * (ids != pad)                     # [B, T]
        return positions.argmax(axis=-1)

    def _loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        if self.config.is_sequence_classifier:
            return classification_loss(logits, labels, self.config.num_labels)
        return causal_lm_loss(logits, labels)

    def _check_ids(self, input_ids) -> np.ndarray:
        ids = integer_array(input_ids, "input_ids")
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be an integer array [B, T] with B >= 1 and T >= 1, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be integers, got dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} in input_ids is outside the vocabulary "
                             f"[0, {self.config.vocab_size})")
        return ids.astype(np.int64)

    def _check_attention_size(self, B: int, T: int, S: int, output_attentions: bool) -> None:
        """A forward builds a [B, T, S] mask (and, for output_attentions, [B, H, T, S] float32 weights
        per layer): refuse sizes past the limits before allocating, instead of a MemoryError minutes in."""
        if B * T * S > MAX_MASK_ELEMENTS:
            raise ValueError(f"a forward of {B} x {T} new tokens over {S} positions needs a [B, T, S] attention "
                             f"mask of {B * T * S / 2**30:.1f} GiB (limit {MAX_MASK_ELEMENTS / 2**30:.0f} GiB): feed "
                             "the tokens in chunks with a cache (generate's prefill_chunk does)")
        weights = 4 * B * self.config.num_attention_heads * T * S * self.config.num_hidden_layers
        if output_attentions and weights > MAX_ATTENTION_BYTES:
            raise ValueError(f"output_attentions for {T} tokens over {S} positions would hold {weights / 2**30:.1f} "
                             f"GiB of weights (limit {MAX_ATTENTION_BYTES / 2**30:.0f} GiB): use fewer tokens, or "
                             "on_record to keep one layer's")

    def _check_cache(self, cache: KVCache, B: int) -> None:
        """The cache must be one this model made: same layers, windows, kv heads and head size."""
        cfg = self.config
        windows = tuple(self.layer_window(cfg, i) for i in range(cfg.num_hidden_layers))
        if getattr(cache, "layout", None) != (windows, cfg.num_key_value_heads, cfg.head_dim):
            raise ValueError(f"the cache was not made for this {cfg.model_type} model (its layers, windows or head "
                             "sizes differ); make one with model.new_cache()")
        if cache.batch_size != B:
            raise ValueError(f"input_ids batch size {B} does not match the cache's batch size {cache.batch_size}")

    @staticmethod
    def _check_positions(position_ids, B: int, T: int) -> np.ndarray:
        """Integer positions [B, T] (or [T], or [1, T], broadcast): a float 1.5 would silently become 1."""
        positions = integer_array(position_ids, "position_ids")
        if positions.dtype.kind not in "iu":
            raise ValueError(f"position_ids must be integers, got dtype {positions.dtype}")
        try:
            return np.broadcast_to(positions, (B, T)).astype(np.int64)
        except ValueError:
            raise ValueError(f"position_ids has shape {positions.shape}; expected {(B, T)}") from None

    @staticmethod
    def _full_mask(attention_mask, cache, B: int, T: int, past: int) -> np.ndarray:
        """The [B, past + T] padding mask: given whole, given for the new tokens only, or all ones."""
        previous = cache.attention_mask if cache is not None else np.zeros((B, 0), dtype=bool)
        if attention_mask is None:
            return np.concatenate([previous, np.ones((B, T), dtype=bool)], axis=1)
        mask = np.asarray(attention_mask).astype(bool)
        if mask.shape == (B, past + T):
            return mask
        if mask.shape == (B, T):
            return np.concatenate([previous, mask], axis=1)
        raise ValueError(f"attention_mask has shape {mask.shape}; expected {(B, past + T)} or {(B, T)}")


def integer_array(values, name: str) -> np.ndarray:
    """np.asarray with numpy's ragged-list error turned into one line naming the argument."""
    try:
        return np.asarray(values)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular array (rows of equal length); pad the rows and "
                         "pass an attention_mask") from None


def check_labels(labels, shape: tuple, vocab_size: int) -> np.ndarray:
    """Causal-LM labels: integers [B, T] like input_ids, each in [0, V) or -100 (ignored). transformers'
    cross_entropy raises on any other value; numpy would index from the end (-1: the last token)."""
    labels = integer_array(labels, "labels")
    if labels.dtype.kind not in "iu" or labels.shape != shape:
        raise ValueError(f"labels must be integers of shape {shape} like input_ids, got {labels.dtype} {labels.shape}")
    used = labels[:, 1:]                                   # position t predicts label t+1: the first is unused
    bad = (used != -100) & ((used < 0) | (used >= vocab_size))
    if bad.any():
        raise ValueError(f"label {int(used[bad][0])} is outside the vocabulary [0, {vocab_size}) and is not "
                         "-100 (ignored)")
    return labels


def causal_lm_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """transformers' ForCausalLMLoss: position t predicts label t+1; -100 is ignored; mean over kept."""
    shift_labels = np.concatenate([labels[:, 1:], np.full((labels.shape[0], 1), -100)], axis=1)
    flat_logits = logits.reshape(-1, logits.shape[-1]).astype(np.float32)
    flat_labels = shift_labels.reshape(-1)
    keep = flat_labels != -100
    log_probs = log_softmax(flat_logits[keep])
    nll = -log_probs[np.arange(keep.sum()), flat_labels[keep]]
    return float(nll.sum() / keep.sum()) if keep.any() else float("nan")


def classification_loss(logits: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """transformers' ForSequenceClassificationLoss with the problem type inferred."""
    if num_labels == 1:
        return float(np.mean((logits.squeeze(-1) - labels.astype(np.float32)) ** 2))
    if labels.dtype.kind in "iu":
        return float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels]))
    # multi-label: binary cross-entropy with logits
    z, y = logits.astype(np.float64), labels.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
