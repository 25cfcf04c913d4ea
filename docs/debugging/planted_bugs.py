"""Plant one of the parity tool's negative-control bugs (tests/test_parity_tool.py) and find it by stepping.

    python docs/debugging/planted_bugs.py llama      # SmolLM2: layer 1's up_proj weights 1% too large
    python docs/debugging/planted_bugs.py cohere     # tiny Command-R: layer 0's k_proj
    python docs/debugging/planted_bugs.py cohere2    # tiny Command R7B: layer 3's o_proj

The parity report names the first intermediate that differs from transformers; the forward then
stops there with the tape on (everything recorded so far is in ctx.tape) and `ref`, transformers'
values, importable from __main__. docs/debugging.md shows the three sessions.
"""
import sys

import numpy as np

import minilm
from minilm.default_model import default_model_dir
from minilm.formats import quantize
from minilm.parity import Reference, parity_report
from minilm.testing import tiny_checkpoint

BUGS = {"llama": "model.layers.1.mlp.up_proj.weight",
        "cohere": "model.layers.0.self_attn.k_proj.weight",
        "cohere2": "model.layers.3.self_attn.o_proj.weight"}

family = sys.argv[1] if len(sys.argv) > 1 else "llama"
folder = default_model_dir() if family == "llama" else tiny_checkpoint(family)
model = minilm.load(folder, backend="numpy", progress=False)
if family == "llama":
    from minilm.tokenizer import Tokenizer
    ids = np.array([Tokenizer.from_pretrained(folder).encode("The capital of France is")])
else:                                                  # tiny random checkpoints have no tokenizer
    ids = np.array([[5, 17, 33, 9, 101, 64]])
weight = BUGS[family]
model.weights[weight] = quantize(model.weights[weight].dequantize() * np.float32(1.01), "float32")  # the bug

ref = Reference(folder)
report = parity_report(folder, prompt=ids, decode_steps=0, model=model, hf_model=ref.hf_model)
jump = report.first_jump
print(f"planted: {weight} x 1.01; parity: first jump at {jump.name} (max_rel {jump.max_rel:.2g})")
model(ids, tape=True, stop_at=jump.name)
