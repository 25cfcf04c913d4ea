"""SwiGLU, the gated MLP activation of all three families: down(silu(gate(x)) * up(x))."""
import numpy as np


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gate, up [..., F] -> silu(gate) * up  [..., F]"""
    return silu(gate) * up
