"""Matrix products and lookups: linear layers, embeddings, the logit scale."""
import numpy as np


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x [..., IN] @ weight[OUT, IN]^T (+ bias [OUT]) -> [..., OUT], PyTorch's layout."""
    # Flatten to 2-D first: numpy sends a 2-D dot straight to BLAS (a 3-D matmul is ~4x slower).
    y = np.dot(x.reshape(-1, x.shape[-1]), weight.T).reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """ids [B, T] -> table rows [B, T, D]. No sqrt(D) scaling in these families."""
    return table[ids]


def scale_logits(logits: np.ndarray, scale: float) -> np.ndarray:
    """Cohere multiplies the LM head output by `logit_scale` before loss and sampling."""
    return logits * np.float32(scale)
