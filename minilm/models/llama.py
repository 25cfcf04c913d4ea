"""Llama: sequential pre-norm block with RMSNorm, half-split RoPE, GQA, SwiGLU.

    h   = x + attn(rms_norm(x))
    out = h + mlp(rms_norm(h))
"""
from .base import DecoderModel, TensorSpec


class LlamaModel(DecoderModel):
    model_type = "llama"
    # transformers 5.23 LlamaConfig defaults for keys a config.json may omit
    config_defaults = dict(rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                           bos_token_id=1, eos_token_id=2, pad_token_id=None, rope_theta=10000.0,
                           max_position_embeddings=2048, hidden_act="silu")
    norm_eps_key = "rms_norm_eps"
    interleaved_rope = False           # pairs (i, i + HD/2)

    @classmethod
    def family_config(cls, cfg, source):
        return {"mlp_bias": bool(cfg.get("mlp_bias", False))}

    @classmethod
    def layer_tensors(cls, config, i):
        # The second norm, before the MLP: the sequential block has two.
        return {f"model.layers.{i}.post_attention_layernorm.weight": TensorSpec((config.hidden_size,), "vector")}

    gguf_architecture = "llama"

    @classmethod
    def gguf_config(cls, key, tensor_names):
        return {"mlp_bias": "blk.0.ffn_up.bias" in tensor_names}

    @classmethod
    def gguf_permuted_heads(cls, config):
        # llama.cpp rotates adjacent pairs, HF Llama (i, i + HD/2): its converter permuted these rows.
        return {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}

    def norm(self, x, weight):
        return self.backend.rms_norm(x, weight, self.config.norm_eps)

    def decoder_layer(self, i, x, ctx):
        p = f"model.layers.{i}"
        normed = self.norm(x, self.w(p + ".input_layernorm.weight"))
        self.record(ctx, f"layers.{i}.attn_norm", normed)
        h = x + self.self_attention(i, normed, ctx)
        normed = self.norm(h, self.w(p + ".post_attention_layernorm.weight"))
        self.record(ctx, f"layers.{i}.mlp_norm", normed)
        return h + self.mlp(i, normed, ctx)
