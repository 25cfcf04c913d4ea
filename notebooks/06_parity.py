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
# # 06 · Parity: layer-by-layer error against transformers
#
# `minilm.parity.parity_report` runs minilm and transformers (float32, eager attention) on the
# same checkpoint and prompt, for the prefill and a few cached greedy decode steps.
# transformers' intermediates are captured with forward hooks and named like minilm's tape,
# so every sub-step of every layer gets two numbers:
#
# $$\text{max\_abs} = \max |a - b|, \qquad \text{max\_rel} = \frac{\max |a - b|}{\max |b|}$$
#
# The same report is the command `minilm parity --model M`.

# %%
import time
import numpy as np
import matplotlib.pyplot as plt
import minilm

# %%
import warnings
warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm, imported by transformers
from minilm.default_model import default_model_dir
from minilm.parity import load_transformers_model, parity_report

folder = default_model_dir()
ours = minilm.load(folder, backend="numpy", progress=False)
reference = load_transformers_model(folder)
start = time.perf_counter()
report = parity_report(folder, decode_steps=2, model=ours, hf_model=reference)
print(f"{time.perf_counter() - start:.1f} s")
print("\n".join(report.format(stages=["prefill"]).splitlines()[:45]))

# %% [markdown]
# ## Errors along the forward pass
#
# Absolute errors grow in the layers where a few residual dimensions become very large
# (SmolLM2 has such "massive activations"); relative to the tensor's scale the error stays at
# float32 rounding level ($\sim 10^{-6}$) all the way to the logits. That is why the threshold
# applies to `max_rel` by default.

# %%
fig, axes = plt.subplots(2, 1, figsize=(13, 7), sharex=True)
report.plot("prefill", metric="abs", ax=axes[0])
report.plot("prefill", metric="rel", ax=axes[1])
plt.tight_layout(); plt.show()

columns = ["attn_norm", "attn.q", "attn.k", "attn.v", "attn.q_rope", "attn.k_rope",
           "attn.context", "attn.out", "mlp_norm", "mlp.out", "out"]
rel = report.errors("prefill", "rel")
grid = np.array([[rel[f"layers.{i}.{c}"] for c in columns] for i in range(ours.config.num_hidden_layers)])
fig, ax = plt.subplots(figsize=(8, 7))
image = ax.imshow(np.log10(grid), cmap="viridis", aspect="auto")
ax.set_xticks(range(len(columns)), columns, rotation=60)
ax.set_ylabel("layer"); ax.set_title("log10 max_rel error, prefill")
fig.colorbar(image); plt.show()

# %% [markdown]
# ## Decode steps and greedy tokens
#
# Both engines are fed transformers' greedy token at each step. If a token ever differs,
# the report gives the gap between the two best logits: a gap as small as the float noise is
# a harmless near tie; a large gap with intermediates already over the threshold is a bug.

# %%
for stage in report.stages:
    errors = report.errors(stage, "rel")
    worst = max(errors, key=errors.get)
    print(f"{stage:9s} worst max_rel {errors[worst]:.1e} at {worst}")
for t in report.tokens:
    print(f"after {t.stage:9s} transformers {t.reference_token:6d} minilm {t.minilm_token:6d} "
          f"top-2 gap {t.reference_gap:.3f}  logits max_abs {t.logits_max_abs:.1e}")
print("report ok:", report.ok)

# %% [markdown]
# ## A negative control: break one weight, find it
#
# Scale one matrix of the minilm copy by 1.001 (a 0.1% error, far below what you could see in
# the generated text). The report must name exactly that layer and sub-step as the first jump.

# %%
from minilm.formats import quantize
name = "model.layers.17.mlp.up_proj.weight"
original = ours.weights[name]
ours.weights[name] = quantize(original.dequantize() * np.float32(1.001), "float32")
try:
    broken = parity_report(folder, decode_steps=0, model=ours, hf_model=reference)
finally:
    ours.weights[name] = original
print("first jump:", broken.first_jump)
fig, ax = plt.subplots(figsize=(13, 3.5))
broken.plot("prefill", ax=ax)
plt.show()
