"""One forward of SmolLM2 (the default model) on the NumPy backend that stops at a tape name.

    python docs/debugging/stop_at.py                          # stops at layers.3.attn.q_rope
    python docs/debugging/stop_at.py layers.0.mlp.act --backend numba
    python docs/debugging/stop_at.py layers.0.attn.q --model path/to/checkpoint --ids 5,6,7

The debugger opens in the model code that computed the value, with its locals in scope
(docs/debugging.md walks through a session). `c` finishes the forward.
"""
import argparse

import numpy as np

import minilm
from minilm.resolve import resolve_model_dir

parser = argparse.ArgumentParser()
parser.add_argument("name", nargs="?", default="layers.3.attn.q_rope", help="a tape name (docs/tape.md)")
parser.add_argument("--model", default=None, help="checkpoint folder (default: SmolLM2-135M-Instruct)")
parser.add_argument("--backend", default="numpy", choices=["numpy", "numba", "cuda", "cuda-emulated"])
parser.add_argument("--text", default="The capital of France is")
parser.add_argument("--ids", default=None, help="comma-separated token ids instead of --text (no tokenizer needed)")
args = parser.parse_args()

folder = resolve_model_dir(args.model)
model = minilm.load(folder, backend=args.backend, progress=False)
if args.ids:
    ids = np.array([[int(t) for t in args.ids.split(",")]])
else:
    from minilm.tokenizer import Tokenizer
    ids = np.array([Tokenizer.from_pretrained(folder).encode(args.text)])
print(f"{ids.shape[1]} tokens: {ids[0].tolist()}")
out = model(ids, stop_at=args.name)
print("logits", out.logits.shape)
