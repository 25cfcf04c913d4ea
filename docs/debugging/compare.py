"""Stop at a tape name with transformers' value at the same name beside minilm's.

    python docs/debugging/compare.py layers.3.attn.q_rope

The hook below runs at every recorded name; at the chosen one it computes transformers' value
(minilm.parity.Reference, the parity tool's hooks) and calls breakpoint() with `ours`, `theirs`
and `diff` in scope: the same in pdb and in an IDE (.vscode/launch.json). `up` twice is the
model code that computed the value.
"""
import argparse

import numpy as np

import minilm
from minilm.parity import Reference
from minilm.resolve import resolve_model_dir
from minilm.tokenizer import Tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("name", nargs="?", default="layers.3.attn.q_rope", help="a tape name (docs/tape.md)")
parser.add_argument("--model", default=None, help="checkpoint folder (default: SmolLM2-135M-Instruct)")
parser.add_argument("--backend", default="numpy", choices=["numpy", "numba", "cuda", "cuda-emulated"])
parser.add_argument("--text", default="The capital of France is")
args = parser.parse_args()

folder = resolve_model_dir(args.model)
model = minilm.load(folder, backend=args.backend, progress=False)
ids = np.array([Tokenizer.from_pretrained(folder).encode(args.text)])
ref = Reference(folder)                               # transformers, float32, eager attention


def compare(name, value):
    if name != args.name:
        return
    ours = np.asarray(model.backend.to_numpy(value))
    theirs = ref.at(name, ids)
    diff = float(np.abs(ours - theirs).max())
    print(f"{name}: minilm {ours.shape}, transformers {theirs.shape}, max |difference| = {diff:.3g}")
    breakpoint()                                      # ours, theirs, diff; `up` twice: the model code


model(ids, on_record=compare)
