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
# # 03 · Attention: GQA, masks, Cohere2's global layers, heatmaps
#
# $$\mathrm{Attn}(Q,K,V) = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d}} + M\Big)V,
#   \qquad M_{ij} = 0 \text{ if key } j \text{ is visible to query } i, \text{ else } -\infty$$

# %%
import time
import numpy as np
import matplotlib.pyplot as plt
import minilm

# %%
import os
from minilm.testing import tiny_checkpoint   # config.json + random scaled-up weights in a temp folder

# %% [markdown]
# ## Grouped-query attention (GQA)
#
# With $H$ query heads and $KV < H$ key/value heads, query head $h$ reads kv head
# $\lfloor h / (H/KV) \rfloor$: each kv head is **repeated** (not tiled) for $H/KV$ query heads.
# The KV cache shrinks by $H/KV$.

# %%
from minilm.ops import attention as attn_ops
H, KV, HD, T = 4, 2, 8, 5
print("query head -> kv head:", {h: h // (H // KV) for h in range(H)})
rng = np.random.default_rng(0)
q = rng.standard_normal((1, T, H, HD)).astype(np.float32)
k = rng.standard_normal((1, T, KV, HD)).astype(np.float32)
v = rng.standard_normal((1, T, KV, HD)).astype(np.float32)
mask = attn_ops.attention_mask(np.arange(T), np.arange(T), np.ones((1, T), bool))
gqa = attn_ops.attention(q, k, v, mask, HD ** -0.5)
repeated = attn_ops.attention(q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2), mask, HD ** -0.5)
tiled = attn_ops.attention(q, np.tile(k, (1, 1, 2, 1)), np.tile(v, (1, 1, 2, 1)), mask, HD ** -0.5)
print("GQA == MHA with repeated kv heads:", np.allclose(gqa, repeated))
print("GQA == MHA with tiled kv heads:   ", np.allclose(gqa, tiled), "(the wrong mapping)")

# SmolLM2: 9 query heads share 3 kv heads
L, KVs, HDs, ctx = 30, 3, 64, 8192
print(f"SmolLM2 KV cache at {ctx} tokens: {2 * L * KVs * HDs * ctx * 4 / 2**20:.0f} MiB float32 "
      f"(without GQA: {2 * L * 9 * HDs * ctx * 4 / 2**20:.0f} MiB)")

# %% [markdown]
# ## Causal, sliding-window and padding masks
#
# `minilm.masks` draws the visibility rule of every layer
# ($j \le i$, key not padding, and for sliding layers $j > i - W$).
# The tiny Cohere2 model has window $W = 4$: layers 0-2 slide, layer 3 is global.
# The first two positions are left padding.

# %%
from minilm.masks import mask_pictures, render_text, save_png
from IPython.display import Image

folder = tiny_checkpoint("cohere2")
padding = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
print(render_text(folder, length=10, attention_mask=padding))
Image(save_png(folder, os.path.join(folder, "masks.png"), length=10, attention_mask=padding))

# %% [markdown]
# ## Cohere2's global layers have no positional encoding
#
# Every 4th layer of Command R7B attends to the whole sequence but skips RoPE (NoPE):
# its scores $q\cdot k$ depend on content only, so word order reaches it only through the causal
# mask and the sliding layers before it. The tape shows it: layer 3 records no `q_rope`.

# %%
model = minilm.load(folder, backend="numpy", progress=False)
ids = np.random.default_rng(1).integers(3, 256, size=(1, 12))
tape = model(ids, tape=True).tape
for i in range(model.config.num_hidden_layers):
    names = [n.split(".", 2)[2] for n in tape if n.startswith(f"layers.{i}.attn.")]
    print(f"layer {i} ({model.config.layer_types[i]}):", ", ".join(names))

# RoPE is relative and NoPE ignores positions: shifting every position by 100 changes nothing.
shifted = model(ids, position_ids=np.arange(12)[None] + 100).logits
print("max |logits(shifted positions) - logits| =", float(np.abs(shifted - model(ids).logits).max()))


# %% [markdown]
# ## Attention weights: `output_attentions=True`
#
# `model(ids, output_attentions=True).attentions` holds every layer's softmax weights
# $[B, H, T, S]$ (each row sums to 1 over the keys the mask lets it see), the same numbers
# transformers returns with `output_attentions=True` (`tests/test_output_attentions.py`).
# The attention kernels never hold them, so a separate op (`attention_probs`) computes them,
# only when asked. Multiplying them by $V$ gives back the recorded `attn.context`.

# %%
out = model(ids, output_attentions=True, tape=True)
cfg = model.config
for layer in (0, 3):
    probs = out.attentions[layer]                                                # [B, H, T, S]
    v = np.repeat(out.tape[f"layers.{layer}.attn.v"], cfg.num_attention_heads // cfg.num_key_value_heads, axis=2)
    context = np.einsum("bhts,bshd->bthd", probs, v).reshape(out.tape[f"layers.{layer}.attn.context"].shape)
    same = np.allclose(context, out.tape[f"layers.{layer}.attn.context"], atol=1e-5)
    print(f"layer {layer}: weights {probs.shape}, weights @ v = recorded context: {same}")
print("keys seen per query, sliding layer 0:", (out.attentions[0][0, 0] > 0).sum(-1))
print("keys seen per query, global layer 3: ", (out.attentions[3][0, 0] > 0).sum(-1))

fig, axes = plt.subplots(2, 4, figsize=(13, 6.5))
for row, layer in enumerate((0, 3)):
    for h in range(4):
        axes[row, h].imshow(out.attentions[layer][0, h], cmap="magma", vmin=0, vmax=1)
        axes[row, h].set_title(f"layer {layer} ({cfg.layer_types[layer][:7]}) head {h}", fontsize=9)
        axes[row, h].set_xlabel("key"); axes[row, h].set_ylabel("query")
plt.tight_layout(); plt.show()

# %% [markdown]
# ### The same on a real model
#
# SmolLM2's heads show typical patterns: many heads park attention on the first token
# (an "attention sink"), some look at the previous token. `minilm attention "text" --layer 12
# --head 3 --png out.png` draws the same from the command line.

# %%
from minilm.default_model import default_model_dir
from minilm.tokenizer import Tokenizer
real_folder = default_model_dir()
real = minilm.load(real_folder, backend="numpy", progress=False)
tok = Tokenizer.from_pretrained(real_folder)
text_ids = tok.encode("The quick brown fox jumps over the lazy dog because it was")
labels = [tok.decode([t]) for t in text_ids]
layer = 12
probs = real(np.array([text_ids]), output_attentions=True).attentions[layer]     # [1, 9, T, T]
fig, axes = plt.subplots(1, 3, figsize=(15, 5))
for ax, h in zip(axes, (0, 3, 7)):
    ax.imshow(probs[0, h], cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(f"SmolLM2 layer {layer}, head {h}")
plt.tight_layout(); plt.show()
