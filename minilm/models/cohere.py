"""Cohere (Command-R): parallel block with one LayerNorm, interleaved RoPE,
optional qk-norm (Command R+), and `logit_scale` on the LM head.

    n   = layer_norm(x)
    out = x + attn(n) + mlp(n)
"""
from .base import DecoderModel, TensorSpec, shortest_float32


class CohereModel(DecoderModel):
    model_type = "cohere"
    # transformers 5.23 CohereConfig defaults
    config_defaults = dict(layer_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
                           logit_scale=0.0625, use_qk_norm=False, bos_token_id=5, eos_token_id=255001,
                           pad_token_id=0, rope_theta=500000.0, max_position_embeddings=8192, hidden_act="silu")
    norm_eps_key = "layer_norm_eps"
    interleaved_rope = True            # pairs (2i, 2i+1)

    @classmethod
    def family_config(cls, cfg, source):
        # Cohere MLPs never have a bias; logits are multiplied by logit_scale.
        return {"mlp_bias": False, "logit_scale": float(cfg["logit_scale"]),
                "use_qk_norm": bool(cfg.get("use_qk_norm", False))}

    @classmethod
    def layer_tensors(cls, config, i):
        if not config.use_qk_norm:
            return {}
        p, H, KV, HD = f"model.layers.{i}.self_attn", config.num_attention_heads, config.num_key_value_heads, \
            config.head_dim
        return {f"{p}.q_norm.weight": TensorSpec((H, HD), "vector"), f"{p}.k_norm.weight": TensorSpec((KV, HD), "vector")}

    gguf_architecture = "command-r"       # interleaved RoPE is llama.cpp's own: rows stored as in HF

    @classmethod
    def gguf_config(cls, key, tensor_names):
        return {"logit_scale": shortest_float32(key("logit_scale", kind=float)),
                "use_qk_norm": "blk.0.attn_q_norm.weight" in tensor_names}

    @classmethod
    def gguf_metadata(cls, config):
        return {"logit_scale": float(config.logit_scale)}

    def norm(self, x, weight):
        return self.backend.layer_norm(x, weight, self.config.norm_eps)

    def decoder_layer(self, i, x, ctx):
        normed = self.norm(x, self.w(f"model.layers.{i}.input_layernorm.weight"))
        self.record(ctx, f"layers.{i}.attn_norm", normed)
        # Attention and MLP both read the same normed input; their sum joins the residual.
        return (x + self.self_attention(i, normed, ctx)) + self.mlp(i, normed, ctx)

    def qk_norm(self, i, q, k):
        # Command R+: per-head LayerNorm over HD, before RoPE; weights [H, HD] and [KV, HD].
        if not self.config.use_qk_norm:
            return q, k
        p = f"model.layers.{i}.self_attn"
        return self.norm(q, self.w(p + ".q_norm.weight")), self.norm(k, self.w(p + ".k_norm.weight"))
