"""The family registry: config.json's `model_type` -> the class that runs it.

Each family module states its own facts (config defaults, tensors, norm, block
wiring, RoPE layout, per-layer RoPE and window); nothing outside the family
modules and this registry compares `model_type` strings.
"""
from .base import MATRIX_KINDS, DecoderModel, TensorSpec
from .cohere import CohereModel
from .cohere2 import Cohere2Model
from .llama import LlamaModel

FAMILIES: dict[str, type[DecoderModel]] = {cls.model_type: cls for cls in (LlamaModel, CohereModel, Cohere2Model)}

__all__ = ["FAMILIES", "DecoderModel", "TensorSpec", "MATRIX_KINDS", "LlamaModel", "CohereModel", "Cohere2Model"]
