"""HF config.json -> one frozen ModelConfig, for any family in the registry.

Field names follow the HF config keys. What differs between families (defaults
for omitted keys, the norm epsilon's key, logit_scale, qk-norm, layer types)
comes from the family class in `minilm/models/`; this module holds what every
family shares: required keys, head layout and the RoPE key conversion of
transformers 5.23 (docs/semantics.md sections 1-4).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import ConfigError, check_positive_int
from .models import FAMILIES

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str                      # a key of minilm.models.FAMILIES
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
    logit_scale: float = 1.0             # logits are multiplied by this (Cohere)
    use_qk_norm: bool = False            # per-head norm of q and k (Command R+)
    sliding_window: int | None = None    # W for "sliding_attention" layers
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
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ConfigError(f"{source}: unsupported model_type={model_type!r} "
                          f"(supported: {', '.join(FAMILIES)})")
    cfg = {**family.config_defaults, **raw}
    for key in REQUIRED_KEYS:
        if cfg.get(key) is None:
            raise ConfigError(f"{source}: missing required key {key!r}")
        check_positive_int(cfg, key, source)

    hidden, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
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

    architectures = tuple(cfg.get("architectures") or ())
    num_labels = None
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        num_labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2
    fields = dict(
        model_type=model_type, vocab_size=cfg["vocab_size"], hidden_size=hidden,
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=cfg["max_position_embeddings"],
        rope_parameters=_rope_parameters(cfg, head_dim, source),
        norm_eps=float(cfg[family.norm_eps_key]), hidden_act="silu",
        attention_bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
        tie_word_embeddings=bool(cfg["tie_word_embeddings"]), layer_types=("full_attention",) * layers,
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"), architectures=architectures, num_labels=num_labels, raw=raw)
    fields.update(family.family_config(cfg, source))
    return ModelConfig(**fields)


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
