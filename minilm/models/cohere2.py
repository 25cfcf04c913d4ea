"""Cohere2 (Command R7B): the Cohere block, but layers alternate between
sliding-window attention with RoPE and global attention with no positional
encoding at all (NoPE). No qk-norm.
"""
from ..errors import ConfigError, check_positive_int
from .base import shortest_float32
from .cohere import CohereModel

LAYER_TYPES = ("full_attention", "sliding_attention")


class Cohere2Model(CohereModel):
    model_type = "cohere2"
    # transformers 5.23 Cohere2Config defaults
    config_defaults = dict(layer_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
                           logit_scale=0.0625, bos_token_id=5, eos_token_id=255001, pad_token_id=0,
                           rope_theta=10000.0, max_position_embeddings=8192, sliding_window=4096,
                           sliding_window_pattern=4, hidden_act="silu")

    @classmethod
    def family_config(cls, cfg, source):
        window = check_positive_int(cfg, "sliding_window", source)
        layers = cfg["num_hidden_layers"]
        types = cfg.get("layer_types")
        if types is None:
            # Legacy key: every P-th layer (1-based) is global.
            pattern = check_positive_int(cfg, "sliding_window_pattern", source)
            types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
        if not isinstance(types, list) or len(types) != layers:
            raise ConfigError(f"{source}: layer_types must be a list of num_hidden_layers={layers} entries")
        for t in types:
            if t not in LAYER_TYPES:
                raise ConfigError(f"{source}: unknown layer_types entry {t!r} (known: {', '.join(LAYER_TYPES)})")
        return {"mlp_bias": False, "logit_scale": float(cfg["logit_scale"]), "use_qk_norm": False,
                "sliding_window": window, "layer_types": tuple(types)}

    gguf_architecture = "cohere2"

    @classmethod
    def gguf_config(cls, key, tensor_names):
        # llama.cpp: a per-layer bool list (True = sliding) when written, else every 4th layer global.
        pattern = key("attention.sliding_window_pattern", None)
        config = {"logit_scale": shortest_float32(key("logit_scale", kind=float)),
                  "sliding_window": key("attention.sliding_window")}
        if isinstance(pattern, list):
            config["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            config["sliding_window_pattern"] = pattern or 4
        return config

    @classmethod
    def gguf_metadata(cls, config):
        return {"logit_scale": float(config.logit_scale), "attention.sliding_window": config.sliding_window,
                "attention.sliding_window_pattern": [t == "sliding_attention" for t in config.layer_types]}

    @classmethod
    def layer_uses_rope(cls, config, i):
        # Global (full_attention) layers see unrotated q and k.
        return config.layer_types[i] == "sliding_attention"
