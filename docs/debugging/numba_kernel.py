"""Step through a Numba kernel line by line: run it as plain Python (docs/debugging.md).

    NUMBA_DISABLE_JIT=1 python docs/debugging/numba_kernel.py
    (Pdb) s                    # into numba_attention.attention_probs, the Python glue
    (Pdb) b probs_row          # the kernel of one query row, now a Python function
    (Pdb) c

With JIT disabled every @njit function is the Python function it decorates; the few helpers
that exist only in compiled code (intrinsics, overloads) have NumPy twins
(minilm/ops/numba_math.py: python_when_jit_disabled).
"""
import sys

import numba
import numpy as np

from minilm.ops import numba_attention
from minilm.ops.attention import attention_mask

if not numba.config.DISABLE_JIT:
    print("NUMBA_DISABLE_JIT is not set: the kernel runs compiled and cannot be stepped into", file=sys.stderr)
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 3, 2, 8)).astype(np.float32)          # [B, T, H, HD]
k = rng.standard_normal((1, 3, 1, 8)).astype(np.float32)          # [B, S, KV, HD]: one kv head for both
mask = attention_mask(np.arange(3), np.arange(3), np.ones((1, 3), bool))   # causal [B, T, S]
breakpoint()
probs = numba_attention.attention_probs(q, k, mask, 8 ** -0.5)    # [B, H, T, S]
print(probs[0, 1])
