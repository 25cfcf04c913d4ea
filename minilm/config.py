"""HF config.json -> one frozen ModelConfig for llama, cohere and cohere2.

Field names follow the HF config keys. Per-family defaults and the RoPE key
conversion follow transformers 5.23 (reference-semantics.md sections 1-4).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config.json that minilm cannot run: names the key and the value."""


SUPPORTED_MODEL_TYPES = ("llama", "cohere", "cohere2")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")

# Per-family defaults for keys a config.json may omit (transformers 5.23).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=None, rope_theta=10000.0,
                  max_position_embeddings=2048, hidden_act="silu"),
    "cohere": dict(layer_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
                   logit_scale=0.0625, use_qk_norm=False, bos_token_id=5, eos_token_id=255001,
                   pad_token_id=0, rope_theta=500000.0, max_position_embeddings=8192,
                   hidden_act="silu"),
    "cohere2": dict(layer_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
                    logit_scale=0.0625, bos_token_id=5, eos_token_id=255001, pad_token_id=0,
                    rope_theta=10000.0, max_position_embeddings=8192, sliding_window=4096,
                    sliding_window_pattern=4, hidden_act="silu"),
}
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str                      # "llama" | "cohere" | "cohere2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_parameters: dict                # always holds rope_type and rope_theta
    norm_eps: float                      # rms_norm_eps (llama) or layer_norm_eps (cohere*)
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    logit_scale: float = 1.0             # cohere*: logits are multiplied by this
    use_qk_norm: bool = False            # cohere only (Command R+)
    sliding_window: int | None = None    # cohere2 only
    layer_types: tuple = ()              # per layer: "full_attention" | "sliding_attention"
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    architectures: tuple = ()
    num_labels: int | None = None        # set for *ForSequenceClassification
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_sequence_classifier(self) -> bool:
        return any(a.endswith("ForSequenceClassification") for a in self.architectures)

    @property
    def interleaved_rope(self) -> bool:
        # Cohere pairs (2i, 2i+1); Llama pairs (i, i + HD/2).
        return self.model_type in ("cohere", "cohere2")

    @property
    def parallel_block(self) -> bool:
        return self.model_type in ("cohere", "cohere2")

    def layer_uses_rope(self, layer: int) -> bool:
        # Cohere2 global (full_attention) layers use no positional encoding.
        return self.model_type != "cohere2" or self.layer_types[layer] == "sliding_attention"

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None


def load_config(path: str) -> ModelConfig:
    """Read `path` (a config.json file or a folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config.json not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return parse_config(raw, source=path)


def parse_config(raw: dict, source: str = "config.json") -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"{source}: unsupported model_type={model_type!r} "
                          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    cfg = {**FAMILY_DEFAULTS[model_type], **raw}
    for key in REQUIRED_KEYS:
        if cfg.get(key) is None:
            raise ConfigError(f"{source}: missing required key {key!r}")
        _check_positive_int(cfg, key, source)

    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    if hidden % heads:
        raise ConfigError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads={heads} is not divisible by "
                          f"num_key_value_heads={kv_heads}")
    head_dim = cfg.get("head_dim") or hidden // heads
    if head_dim % 2:
        raise ConfigError(f"{source}: head_dim={head_dim} must be even for RoPE")
    if cfg.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"{source}: unsupported hidden_act={cfg['hidden_act']!r} (only 'silu')")

    norm_eps = cfg["rms_norm_eps"] if model_type == "llama" else cfg["layer_norm_eps"]
    rope = _rope_parameters(cfg, head_dim, source)
    layer_types, window = _layer_types(cfg, model_type, source)
    architectures = tuple(cfg.get("architectures") or ())
    num_labels = None
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        num_labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2

    return ModelConfig(
        model_type=model_type, vocab_size=cfg["vocab_size"], hidden_size=hidden,
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=cfg["max_position_embeddings"], rope_parameters=rope,
        norm_eps=float(norm_eps), hidden_act="silu",
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type == "llama",  # Cohere MLPs never have a bias
        tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
        logit_scale=float(cfg["logit_scale"]) if model_type != "llama" else 1.0,
        use_qk_norm=bool(cfg.get("use_qk_norm", False)) and model_type == "cohere",
        sliding_window=window, layer_types=layer_types,
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"), architectures=architectures,
        num_labels=num_labels, raw=raw,
    )


def _check_positive_int(cfg: dict, key: str, source: str) -> None:
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{source}: {key}={value!r} must be a positive integer")


def _rope_parameters(cfg: dict, head_dim: int, source: str) -> dict:
    """Merge legacy `rope_theta` + `rope_scaling` into one `rope_parameters` dict (HF 5.x)."""
    rope = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling")
    if legacy:
        rope = {**legacy, **rope}
    if "rope_theta" not in rope:
        rope["rope_theta"] = cfg["rope_theta"]
    rope.setdefault("rope_type", rope.get("type", "default"))
    rope_type = rope["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{source}: unknown rope_type={rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if rope_type != "default" and partial not in (None, 1, 1.0):
        # transformers' default RoPE ignores it, but the scaled types rotate only part of each head.
        raise ConfigError(f"{source}: partial_rotary_factor={partial!r} is not supported with "
                          f"rope_type={rope_type!r}")
    if rope_type in ("yarn", "longrope", "llama3"):
        # A top-level original_max_position_embeddings overrides the dict's value.
        orig = cfg.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        rope["original_max_position_embeddings"] = orig or cfg["max_position_embeddings"]
    if rope_type in ("linear", "dynamic", "llama3") and rope.get("factor") is None:
        raise ConfigError(f"{source}: rope_type={rope_type!r} needs rope_parameters['factor']")
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in rope:
                raise ConfigError(f"{source}: rope_type='llama3' needs rope_parameters[{key!r}]")
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            factors = rope.get(key)
            if not isinstance(factors, list) or len(factors) != head_dim // 2:
                raise ConfigError(f"{source}: rope_parameters[{key!r}] must be a list of "
                                  f"head_dim/2={head_dim // 2} floats, got {factors!r}")
    return rope


def _layer_types(cfg: dict, model_type: str, source: str) -> tuple[tuple, int | None]:
    layers = cfg["num_hidden_layers"]
    if model_type != "cohere2":
        return ("full_attention",) * layers, None
    window = cfg["sliding_window"]
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise ConfigError(f"{source}: sliding_window={window!r} must be a positive integer")
    types = cfg.get("layer_types")
    if types is None:
        # Legacy key: every P-th layer (1-based) is global.
        pattern = cfg["sliding_window_pattern"]
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
    if len(types) != layers:
        raise ConfigError(f"{source}: layer_types has {len(types)} entries, num_hidden_layers={layers}")
    for t in types:
        if t not in ("full_attention", "sliding_attention"):
            raise ConfigError(f"{source}: unknown layer_types entry {t!r}")
    return tuple(types), window
