"""Matrix products and lookups: linear layers, embeddings, the logit scale.

Weights are `formats.Weight` objects. The reference decodes a weight to
float32 with its format's own decode (the few lines a learner reads in
minilm/formats/) and multiplies; in "fast" mode it runs the format's
quantized-activation reference instead.
"""
import numpy as np

from ..formats import Weight, get_format


def linear(x: np.ndarray, weight: Weight, bias: np.ndarray | None = None) -> np.ndarray:
    """x [..., IN] @ W^T (+ bias [OUT]) -> [..., OUT], W the weight [OUT, IN] decoded to float32."""
    x2 = x.reshape(-1, x.shape[-1])                                  # [N, IN]
    fast = get_format(weight.format).fast if weight.mode == "fast" else None
    # A 2-D dot goes straight to BLAS (a 3-D matmul is ~4x slower).
    y = fast(x2, weight) if fast else np.dot(x2, weight.dequantize().T)
    y = y.reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def embedding(ids: np.ndarray, table: Weight) -> np.ndarray:
    """ids [B, T] -> table rows [B, T, D], decoding only the rows asked for. No sqrt(D) scaling."""
    ids = np.asarray(ids)
    rows = table.take_rows(ids.reshape(-1)).dequantize()             # [B*T, D]
    return rows.reshape(*ids.shape, table.shape[1])


def scale_logits(logits: np.ndarray, scale: float) -> np.ndarray:
    """Cohere multiplies the LM head output by `logit_scale` before loss and sampling."""
    return logits * np.float32(scale)
