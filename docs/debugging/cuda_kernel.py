"""A CUDA kernel on the CPU harness, built for gdb (-O0 -g, every block on the calling thread).

    gdb -ex "set breakpoint pending on" -ex "set language c++" \
        -ex "break attention.cu:147 if ::harness::tls_worker->block_idx.x == 1 \
             && ::harness::tls_worker->block_idx.y == 2 && ::harness::tls_worker->current->thread_idx.x == 0" \
        -ex run --args $(python -c "import sys; print(sys.executable)") docs/debugging/cuda_kernel.py

attention_probs<float> over q [1, 3, 2, 8], k [1, 3, 1, 8]: grid (H=2, T=3, B=1), one block per
query row; docs/debugging.md shows the session (one thread's view, picking a block and a thread).
"""
import numpy as np

from minilm.backends import get_backend
from minilm.ops.attention import attention_mask

backend = get_backend("cuda-emulated", debug=True, check_thread_order=False)   # one run, debuggable build
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 3, 2, 8)).astype(np.float32)          # [B, T, H, HD]
k = rng.standard_normal((1, 3, 1, 8)).astype(np.float32)          # [B, S, KV, HD]
mask = attention_mask(np.arange(3), np.arange(3), np.ones((1, 3), bool))
probs = backend.attention_probs(q, k, mask, 8 ** -0.5)            # [B, H, T, S]
print("head 1, query 2:", probs[0, 1, 2])
