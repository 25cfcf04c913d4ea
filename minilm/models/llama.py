"""Llama: sequential pre-norm block with RMSNorm, half-split RoPE, GQA, SwiGLU.

    h   = x + attn(rms_norm(x))
    out = h + mlp(rms_norm(h))
"""
from .base import DecoderModel


class LlamaModel(DecoderModel):
    family = "llama"

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
