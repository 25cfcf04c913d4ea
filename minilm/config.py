"""HF config.json -> one frozen ModelConfig, for any family in the registry.

Field names follow the HF config keys. What differs between families (defaults
for omitted keys, the norm epsilon's key, logit_scale, qk-norm, layer types)
comes from the family class in `minilm/models/`; this module holds what every
family shares: required keys, head layout and the RoPE key conversion of
transformers 5.23 (docs/semantics.md sections 1-4).

Every value is checked at parse time, with the key named: types (JSON's
`"false"` is not a boolean), signs and finiteness (a rope_theta of 0 or a
negative norm epsilon would otherwise turn into NaN and then into plausible
garbage), token ids inside the vocabulary, and a layer count that bounds the
per-layer work done before any weight is read (docs/security.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, check_positive_int, is_number, load_json_file
from .models import FAMILIES

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads")
# Per-layer and per-head tables are built from these before any weight is read, so they are
# bounded: llama.cpp refuses more than 512 layers (LLAMA_MAX_LAYERS) and published models stay
# below 200 layers and heads of 256.
MAX_LAYERS = 4096
MAX_HEAD_DIM = 16384

# Keys checked wherever they appear (after family defaults); None means "not given".
POSITIVE_INT_KEYS = ("num_key_value_heads", "head_dim", "sliding_window", "sliding_window_pattern", "num_labels",
                     "original_max_position_embeddings")
BOOL_KEYS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_qk_norm")
NON_NEGATIVE_KEYS = ("rms_norm_eps", "layer_norm_eps")           # norm epsilons: 0 is allowed, -1 is not
FINITE_KEYS = ("logit_scale",)
ROPE_POSITIVE_KEYS = ("rope_theta", "factor", "attention_factor", "beta_fast", "beta_slow", "low_freq_factor",
                      "high_freq_factor")
ROPE_FINITE_KEYS = ("mscale", "mscale_all_dim")


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
    return parse_config(load_json_file(path, "config.json", ConfigError, expect=None), source=path)


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
    numbers_read = (family.norm_eps_key, *(key for key in FINITE_KEYS if key in family.config_defaults))
    _check_values(cfg, source, numbers_read)

    hidden, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    if hidden % heads:
        raise ConfigError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads={heads} is not divisible by "
                          f"num_key_value_heads={kv_heads}")
    head_dim = cfg.get("head_dim") or hidden // heads
    if head_dim > MAX_HEAD_DIM:
        raise ConfigError(f"{source}: head_dim={head_dim} is more than minilm's limit of {MAX_HEAD_DIM}")
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
    _check_rope_frequencies(fields["rope_parameters"], head_dim, fields["max_position_embeddings"], source)
    return ModelConfig(**fields)


def _check_values(cfg: dict, source: str, numbers_read: tuple = ()) -> None:
    """Types, signs and ranges of every key minilm reads, each error naming its key.
    numbers_read: number keys the family always reads, which may not be null."""
    for key in REQUIRED_KEYS + ("max_position_embeddings",):
        check_positive_int(cfg, key, source)
    for key in numbers_read:
        if cfg.get(key) is None:
            raise ConfigError(f"{source}: {key}={cfg.get(key)!r} must be a finite number")
    if cfg["num_hidden_layers"] > MAX_LAYERS:
        raise ConfigError(f"{source}: num_hidden_layers={cfg['num_hidden_layers']} is more than minilm's "
                          f"limit of {MAX_LAYERS} layers")
    given = {key: value for key, value in cfg.items() if value is not None}
    for key in POSITIVE_INT_KEYS:
        if key in given:
            check_positive_int(given, key, source)
    for key in BOOL_KEYS:
        if key in given and not isinstance(given[key], bool):
            raise ConfigError(f"{source}: {key}={given[key]!r} must be true or false")
    for key in NON_NEGATIVE_KEYS + FINITE_KEYS:
        if key in given and not (is_number(given[key]) and (key in FINITE_KEYS or given[key] >= 0)):
            rule = "a finite number" if key in FINITE_KEYS else "a finite number >= 0"
            raise ConfigError(f"{source}: {key}={given[key]!r} must be {rule}")
    for key in ("hidden_act", "model_type"):
        if key in given and not isinstance(given[key], str):
            raise ConfigError(f"{source}: {key}={given[key]!r} must be a string")
    for key, kind in (("architectures", list), ("rope_parameters", dict), ("rope_scaling", dict),
                      ("id2label", dict)):
        if key in given and not isinstance(given[key], kind):
            raise ConfigError(f"{source}: {key}={given[key]!r} must be a JSON {'list' if kind is list else 'object'}")
    if not all(isinstance(a, str) for a in given.get("architectures", [])):
        raise ConfigError(f"{source}: architectures={given['architectures']!r} must be a list of strings")
    _check_token_ids(given, cfg["vocab_size"], source)


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_token_ids(given: dict, vocab_size: int, source: str) -> None:
    """bos/eos/pad are integers (eos may be a list); pad must index the vocabulary, since finished
    rows of a batch feed it back to the model."""
    for key in ("bos_token_id", "pad_token_id"):
        if key in given and not _is_token_id(given[key]):
            raise ConfigError(f"{source}: {key}={given[key]!r} must be an integer token id")
    eos = given.get("eos_token_id", [])
    if not (_is_token_id(eos) or (isinstance(eos, list) and all(map(_is_token_id, eos)))):
        raise ConfigError(f"{source}: eos_token_id={eos!r} must be a token id or a list of token ids")
    if "pad_token_id" in given and not 0 <= given["pad_token_id"] < vocab_size:
        raise ConfigError(f"{source}: pad_token_id={given['pad_token_id']} is outside the vocabulary "
                          f"[0, {vocab_size})")


def _check_rope_values(rope: dict, source: str) -> None:
    for key in ROPE_POSITIVE_KEYS:
        value = rope.get(key)
        if value is not None and not (is_number(value) and value > 0 and np.float32(value) > 0):
            raise ConfigError(f"{source}: rope_parameters[{key!r}]={value!r} must be a finite number > 0")
    for key in ROPE_FINITE_KEYS:
        value = rope.get(key)
        if value is not None and not is_number(value):
            raise ConfigError(f"{source}: rope_parameters[{key!r}]={value!r} must be a finite number")
    if not isinstance(rope.get("rope_type"), str):
        raise ConfigError(f"{source}: rope_parameters['rope_type']={rope.get('rope_type')!r} must be a string")
    if not isinstance(rope.get("truncate", True), bool):
        raise ConfigError(f"{source}: rope_parameters['truncate']={rope['truncate']!r} must be true or false")


def _check_rope_frequencies(rope: dict, head_dim: int, max_pos: int, source: str) -> None:
    """Build the model's RoPE frequencies once (head_dim/2 numbers) and refuse non-finite ones: this
    catches combinations no single key shows (a yarn base of 1, a dynamic head_dim of 2)."""
    from .ops.rope import RotaryEmbedding
    try:
        with np.errstate(all="ignore"):
            rotary = RotaryEmbedding(rope, head_dim, max_pos)
            frequencies = [rotary.inv_freq, rotary.attention_scaling]
            rotary.update(2 * max_pos)          # dynamic and longrope change frequencies past the context
            frequencies += [rotary.inv_freq, rotary.attention_scaling]
        finite = all(np.isfinite(f).all() for f in frequencies)
    except (ArithmeticError, ValueError):
        finite = False
    if not finite:
        raise ConfigError(f"{source}: rope_parameters={rope!r} give non-finite RoPE frequencies")


def _rope_parameters(cfg: dict, head_dim: int, source: str) -> dict:
    """Merge legacy `rope_theta` + `rope_scaling` into one `rope_parameters` dict (HF 5.x)."""
    rope = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling")
    if legacy:
        rope = {**legacy, **rope}
    if "rope_theta" not in rope:
        rope["rope_theta"] = cfg.get("rope_theta")
    rope.setdefault("rope_type", rope.get("type", "default"))
    if rope["rope_theta"] is None:
        raise ConfigError(f"{source}: missing rope_theta")
    _check_rope_values(rope, source)
    rope_type = rope["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{source}: unknown rope_type={rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial is not None and not (is_number(partial) and 0 < partial <= 1):
        raise ConfigError(f"{source}: partial_rotary_factor={partial!r} must be a number in (0, 1]")
    if rope_type != "default" and partial not in (None, 1, 1.0):
        # transformers' default RoPE ignores it, but the scaled types rotate only part of each head.
        raise ConfigError(f"{source}: partial_rotary_factor={partial!r} is not supported with "
                          f"rope_type={rope_type!r}")
    if rope_type in ("yarn", "longrope", "llama3"):
        # A top-level original_max_position_embeddings overrides the dict's value.
        orig = cfg.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        rope["original_max_position_embeddings"] = orig or cfg["max_position_embeddings"]
        check_positive_int(rope, "original_max_position_embeddings", f"{source}: rope_parameters")
    if rope_type in ("linear", "dynamic", "llama3") and rope.get("factor") is None:
        raise ConfigError(f"{source}: rope_type={rope_type!r} needs rope_parameters['factor']")
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if rope.get(key) is None:
                raise ConfigError(f"{source}: rope_type='llama3' needs rope_parameters[{key!r}]")
        if rope["high_freq_factor"] <= rope["low_freq_factor"]:   # the smoothing divides by their difference
            raise ConfigError(f"{source}: rope_parameters high_freq_factor={rope['high_freq_factor']!r} must be "
                              f"greater than low_freq_factor={rope['low_freq_factor']!r}")
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            factors = rope.get(key)
            if (not isinstance(factors, list) or len(factors) != head_dim // 2
                    or not all(is_number(f) and f > 0 for f in factors)):
                raise ConfigError(f"{source}: rope_parameters[{key!r}] must be a list of "
                                  f"head_dim/2={head_dim // 2} positive numbers, got {str(factors)[:80]}")
    return rope
