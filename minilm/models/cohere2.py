"""Cohere2 (Command R7B): the Cohere block, but layers alternate between
sliding-window attention with RoPE and global attention with no positional
encoding at all (NoPE). No qk-norm.
"""
from .cohere import CohereModel


class Cohere2Model(CohereModel):
    family = "cohere2"

    def uses_rope(self, i):
        # Global (full_attention) layers see unrotated q and k.
        return self.config.layer_types[i] == "sliding_attention"

    def window(self, i):
        return self.config.layer_window(i)
