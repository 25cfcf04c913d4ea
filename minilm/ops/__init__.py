"""The op contract shared by every backend.

Shape legend: B batch, T query tokens, S key tokens, D hidden size, H query
heads, KV key/value heads, HD head dim, F intermediate size, V vocabulary.

Every backend (numpy reference, numba, cuda) provides the same functions with
the same signatures; the model code calls them through a `Backend` object
(`minilm.backends.get_backend(name)`) and never branches on the backend:

    rms_norm(x[..., D], weight[D], eps)                 -> [..., D]
    layer_norm(x[..., D], weight[..., D], eps)          -> [..., D]   Cohere: mean-subtracted, no bias;
                                                                     weight broadcasts (qk-norm: x [B,T,H,HD], weight [H,HD])
    apply_rope(x[B,T,H,HD], cos[B,T,HD/2], sin[B,T,HD/2], interleaved) -> [B,T,H,HD]
                                                                     pair i is (i, i+HD/2) half-split or (2i, 2i+1) interleaved
    attention(q[B,T,H,HD], k[B,S,KV,HD], v[B,S,KV,HD], mask[B,T,S] bool, scale) -> [B,T,H,HD]
                                                                     mask True = visible; GQA head h uses kv head h // (H//KV);
                                                                     a query row with no visible key outputs zeros
    swiglu(gate[..., F], up[..., F])                    -> [..., F]   silu(gate) * up
    linear(x[..., IN], weight[OUT, IN], bias[OUT]|None) -> [..., OUT] weight in the backend's storage format
    embedding(ids[B,T] int, table[V, D])                -> [B,T,D]
    scale_logits(logits[...], scale)                    -> [...]
    argmax(scores[B,V])                                 -> [B] int64, first index on ties
    top_k_filter(scores[B,V], k), top_p_filter(scores[B,V], p) -> [B,V] with -inf where removed
                                                                     (host numpy scores; transformers' rules)

plus the glue every backend needs: `asarray` (host numpy -> backend array),
`to_numpy`, and `prepare_weight(array)` (float32 numpy -> storage format).
Masks, RoPE angles and sampling filters are computed on the host in NumPy.
"""
