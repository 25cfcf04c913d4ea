"""Normalisation: Llama's RMSNorm and Cohere's LayerNorm (mean-subtracted, no bias)."""
import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., D] -> x / sqrt(mean(x^2) + eps) * weight   (eps inside the root; weight after)."""
    x = x.astype(np.float32, copy=False)
    variance = np.mean(x * x, axis=-1, keepdims=True)          # [..., 1]
    return weight * (x / np.sqrt(variance + np.float32(eps)))  # HF multiplies by rsqrt; same to 1 ulp


def layer_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Cohere LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight, no bias.

    weight broadcasts against x: [D] for the block norms, [H, HD] for qk-norm on x [B, T, H, HD].
    """
    x = x.astype(np.float32, copy=False)
    mean = np.mean(x, axis=-1, keepdims=True)                   # [..., 1]
    centered = x - mean
    variance = np.mean(centered * centered, axis=-1, keepdims=True)  # biased variance
    return weight * (centered / np.sqrt(variance + np.float32(eps)))
