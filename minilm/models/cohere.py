"""Cohere (Command-R): parallel block with one LayerNorm, interleaved RoPE,
optional qk-norm (Command R+), and `logit_scale` on the LM head.

    n   = layer_norm(x)
    out = x + attn(n) + mlp(n)
"""
from .base import DecoderModel


class CohereModel(DecoderModel):
    family = "cohere"

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
