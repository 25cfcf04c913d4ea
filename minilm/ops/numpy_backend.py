"""The NumPy reference backend: every op is plain NumPy on float32 arrays, steppable in a debugger.

It runs every weight format (it decodes them), so it is where a learner reads the math.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedFormatError
from ..formats import FORMATS, MODES, Weight, get_format
from . import attention, linear, mlp, norm, rope, sampling
from .contract import build_backend


def host_array(array):
    """asarray and to_numpy of the CPU backends: arrays already live on the host."""
    return np.asarray(array)


def one_thread(count=None):
    """NumPy's ops run on the calling thread (BLAS may use more; minilm does not tune it)."""
    return 1


def supports(format, mode):
    """Every format exactly; fast mode where the format has a fast reference (formats/*.py)."""
    return format in FORMATS and (mode == "exact" or (mode in MODES and FORMATS[format].fast is not None))


def prepare_weight(weight: Weight) -> Weight:
    get_format(weight.format)                      # refuses an unknown format by name
    if not supports(weight.format, weight.mode):
        raise UnsupportedFormatError(f"backend 'numpy' does not run weight format {weight.format!r} in "
                                     f"{weight.mode} mode (it has no fast reference)")
    return weight


def numpy_backend():
    return build_backend("numpy", dict(
        rms_norm=norm.rms_norm,
        layer_norm=norm.layer_norm,
        apply_rope=rope.apply_rope,
        attention=attention.attention,
        attention_probs=attention.attention_probs,
        swiglu=mlp.swiglu,
        linear=linear.linear,
        embedding=linear.embedding,
        scale_logits=linear.scale_logits,
        argmax=sampling.argmax,
        top_k_filter=sampling.top_k_filter,
        top_p_filter=sampling.top_p_filter,
        asarray=host_array,
        to_numpy=host_array,
        threads=one_thread,
        supports=supports,
        prepare_weight=prepare_weight,
    ))
