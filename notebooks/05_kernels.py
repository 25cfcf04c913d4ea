# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · One op, three implementations
#
# Every op exists three times with the same signature (`minilm/ops/__init__.py`):
# the NumPy reference, a Numba CPU kernel, and a CUDA C kernel in `kernels/`.
# Without a GPU, `backend="cuda-emulated"` runs the unmodified CUDA source on a CPU harness
# (slow, but the real kernel code). This notebook puts RMSNorm side by side, checks the three
# against each other, times them, then runs a whole tiny model on every backend.

# %%
import time
import numpy as np
import matplotlib.pyplot as plt
import minilm

# %%
from minilm.testing import tiny_checkpoint   # config.json + random scaled-up weights in a temp folder

# %%
import inspect, timeit
from minilm.backends import get_backend
from minilm.ops import norm

backends = {"numpy": get_backend("numpy")}
for name in ("numba", "cuda-emulated", "cuda"):
    try:
        backends[name] = get_backend(name)
    except Exception as e:                      # no numba, no C++ toolchain, no GPU ...
        print(f"{name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0]})")
print("backends:", list(backends))

# %% [markdown]
# ## RMSNorm in NumPy, Numba and CUDA
#
# $y = w \odot x / \sqrt{\mathrm{mean}(x^2) + \varepsilon}$, one row at a time.

# %%
print(inspect.getsource(norm.rms_norm))
if "numba" in backends:
    from minilm.ops import numba_norm
    for fn in ("rms_norm_row", "rms_norm_rows", "rms_norm"):     # kernel, parallel rows, wrapper
        f = getattr(numba_norm, fn, None)
        if f is not None:
            print(inspect.getsource(getattr(f, "py_func", f)))

# %%
from minilm.cuda import registry
print(registry.module_file("rms_norm").read_text())     # the .cu file shipped inside the package

# %% [markdown]
# ## Do they agree?

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 576)).astype(np.float32)
w = (1 + 0.3 * rng.standard_normal(576)).astype(np.float32)
reference = norm.rms_norm(x, w, 1e-5)
results = {}
for name, ops in backends.items():
    y = ops.to_numpy(ops.rms_norm(ops.asarray(x), ops.asarray(w), 1e-5))
    results[name] = y
    print(f"{name:14s} max |y - numpy| = {np.abs(y - reference).max():.1e}")

# %% [markdown]
# ## Timings
#
# Medians of repeated calls on this machine. The emulated CUDA path runs every GPU thread
# as a CPU fiber (and, by default, every launch twice in opposite thread orders to catch
# missing barriers): it is a correctness tool, not a fast path.

# %%
timings = {}
for name, ops in backends.items():
    xa, wa = ops.asarray(x), ops.asarray(w)
    ops.rms_norm(xa, wa, 1e-5)                                  # warm up (JIT, kernel build)
    number = 3 if "cuda-emulated" in name else 50
    runs = timeit.repeat(lambda: ops.to_numpy(ops.rms_norm(xa, wa, 1e-5)), number=number, repeat=3)
    timings[name] = min(runs) / number * 1e3
    gbps = 2 * x.nbytes / (timings[name] / 1e3) / 1e9
    print(f"{name:14s} {timings[name]:9.3f} ms   {gbps:7.2f} GB/s")
fig, ax = plt.subplots(figsize=(7, 2.5))
ax.barh(list(timings), list(timings.values()))
ax.set_xscale("log"); ax.set_xlabel("ms per call, rms_norm [64, 576] (log scale)")
plt.show()

# %% [markdown]
# ## The whole model on every backend
#
# The model code is identical; only the op namespace changes. A tiny Cohere2 model
# (sliding window 4) decodes past its window on each backend; logits must agree with NumPy.

# %%
folder = tiny_checkpoint("cohere2")
ids = np.random.default_rng(3).integers(3, 256, size=(1, 6))
outputs = {}
for name in backends:
    model = minilm.load(folder, backend=name, progress=False)
    start = time.perf_counter()
    tokens = model.generate(ids, max_new_tokens=6)
    logits = model(tokens).logits
    outputs[name] = (tokens, logits)
    print(f"{name:14s} tokens {tokens[0, 6:].tolist()}  {time.perf_counter() - start:6.2f} s")
for name, (tokens, logits) in outputs.items():
    print(f"{name:14s} max |logits - numpy| = {np.abs(logits - outputs['numpy'][1]).max():.1e}, "
          f"same tokens: {np.array_equal(tokens, outputs['numpy'][0])}")
