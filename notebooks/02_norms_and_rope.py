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
# # 02 · Normalisation and rotary position embeddings
#
# Two small ops that every layer uses, and that are easy to get subtly wrong.

# %%
import time
import numpy as np
import matplotlib.pyplot as plt
import minilm

# %%
from minilm.ops import norm, rope
rng = np.random.default_rng(0)

# %% [markdown]
# ## RMSNorm (Llama) and LayerNorm (Cohere)
#
# $$\mathrm{RMSNorm}(x) = w \odot \frac{x}{\sqrt{\tfrac1D\sum_i x_i^2 + \varepsilon}} \qquad
#   \mathrm{LayerNorm}_{\text{Cohere}}(x) = w \odot \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}}$$
#
# RMSNorm does not subtract the mean; Cohere's LayerNorm does, and has no bias.
# $\varepsilon$ sits inside the square root; the weight multiplies after the division.

# %%
D = 64
x = (rng.standard_normal(D) + 2.0).astype(np.float32)      # a vector with a large mean
w = np.ones(D, dtype=np.float32)
r, l = norm.rms_norm(x, w, 1e-6), norm.layer_norm(x, w, 1e-5)
print(f"input      mean {x.mean():+.3f}  rms {np.sqrt((x**2).mean()):.3f}")
print(f"RMSNorm    mean {r.mean():+.3f}  rms {np.sqrt((r**2).mean()):.3f}   (mean kept, rms -> 1)")
print(f"LayerNorm  mean {l.mean():+.3f}  std {l.std():.3f}   (mean removed, std -> 1)")
print("scale invariant:", np.allclose(norm.rms_norm(7.5 * x, w, 1e-6), r, atol=1e-6),
      np.allclose(norm.layer_norm(7.5 * x, w, 1e-5), l, atol=1e-5))

fig, ax = plt.subplots(figsize=(10, 3))
ax.plot(x, label="x", marker=".")
ax.plot(r, label="rms_norm(x)", marker=".")
ax.plot(l, label="layer_norm(x)", marker=".")
ax.axhline(0, color="gray", lw=0.5); ax.legend(); ax.set_xlabel("dimension")
plt.show()

# %% [markdown]
# ## RoPE: rotating pairs of dimensions
#
# Pair $i$ of a query or key at position $p$ is rotated by the angle $p\,\theta_i$ with
# $\theta_i = b^{-2i/d}$ ($b$ = `rope_theta`, $d$ = head dim):
#
# $$\begin{pmatrix}a'\\ b'\end{pmatrix} =
#   \begin{pmatrix}\cos p\theta_i & -\sin p\theta_i\\ \sin p\theta_i & \cos p\theta_i\end{pmatrix}
#   \begin{pmatrix}a\\ b\end{pmatrix}$$
#
# Early pairs spin fast, late pairs slowly. Below, the pair (1, 0) for positions 0..23.

# %%
HD, T = 16, 24
rot = rope.RotaryEmbedding({"rope_type": "default", "rope_theta": 10000.0}, HD, 128)
cos, sin = rot.cos_sin(np.arange(T)[None])                     # [1, T, HD/2]
x = np.zeros((1, T, 1, HD), dtype=np.float32)
x[..., : HD // 2] = 1.0                                        # every half-split pair = (1, 0)
y = rope.apply_rope(x, cos, sin, interleaved=False)[0, :, 0]    # [T, HD]

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
circle = np.linspace(0, 2 * np.pi, 200)
for ax, i in zip(axes, [0, 2, HD // 2 - 1]):
    ax.plot(np.cos(circle), np.sin(circle), color="lightgray")
    ax.scatter(y[:, i], y[:, i + HD // 2], c=np.arange(T), cmap="viridis")
    ax.set_title(f"pair {i}: theta = {rot.inv_freq[i]:.4f} rad / position")
    ax.set_aspect("equal")
plt.show()

# %% [markdown]
# **Why it works: scores depend only on the distance.** A rotation by $p\theta$ on the query
# and $s\theta$ on the key gives $q'\cdot k' = q^\top R((s-p)\theta)\,k$.

# %%
q = rng.standard_normal((1, 1, 1, HD)).astype(np.float32)
k = rng.standard_normal((1, 1, 1, HD)).astype(np.float32)
def rotated(v, position):
    c, s = rot.cos_sin(np.array([[position]]))
    return rope.apply_rope(v, c, s, interleaved=False)
for p in [0, 10, 50]:
    print(f"query at {p:2d}, key at {p + 3:2d}: score = {float((rotated(q, p) * rotated(k, p + 3)).sum()):+.5f}")

# %% [markdown]
# ## Half-split (Llama) vs interleaved (Cohere) pairing
#
# Llama rotates dimension $i$ with $i + d/2$; Cohere rotates $2i$ with $2i+1$.
# Same angles, different pairs: the two are equal up to a permutation of the head
# dimensions, but loading Cohere weights with the Llama pairing gives wrong outputs.

# %%
pair_half = np.r_[np.arange(HD // 2), np.arange(HD // 2)]          # pair index of each dimension
pair_inter = np.repeat(np.arange(HD // 2), 2)
fig, axes = plt.subplots(2, 1, figsize=(10, 2.2))
for ax, pairs, title in [(axes[0], pair_half, "half-split (Llama): i with i + d/2"),
                         (axes[1], pair_inter, "interleaved (Cohere): 2i with 2i + 1")]:
    ax.imshow(pairs[None], cmap="tab20", aspect="auto")
    for d, pid in enumerate(pairs):
        ax.text(d, 0, str(pid), ha="center", va="center", fontsize=8)
    ax.set_yticks([]); ax.set_title(title, fontsize=9)
axes[1].set_xlabel("head dimension (number = pair it belongs to)")
plt.tight_layout(); plt.show()

v = rng.standard_normal((1, T, 2, HD)).astype(np.float32)
perm = np.r_[np.arange(0, HD, 2), np.arange(1, HD, 2)]               # interleaved -> half-split order
inter = rope.apply_rope(v, cos, sin, interleaved=True)
half = rope.apply_rope(v[..., perm], cos, sin, interleaved=False)
print("interleaved == permute, half-split, unpermute:", np.allclose(inter[..., perm], half, atol=1e-6))
print("but the two layouts on the same vector differ by",
      float(np.abs(inter - rope.apply_rope(v, cos, sin, interleaved=False)).max()))

# %% [markdown]
# ## RoPE scaling variants
#
# Long-context models stretch the slow (low-frequency) pairs so that unseen positions
# map to angles seen in training. Each `rope_type` changes $\theta_i$ differently:
# `linear` divides all by the factor, `dynamic` (NTK) grows the base with the sequence,
# `llama3` and `yarn` interpolate only the slow pairs (yarn also scales attention),
# `longrope` divides by per-pair factors.

# %%
HD, MAX = 64, 4096
variants = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear x4": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic x4 @16k": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    "yarn x4": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                "original_max_position_embeddings": 1024},
    "llama3 x8": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
    "longrope (long)": {"rope_type": "longrope", "rope_theta": 10000.0,
                        "short_factor": [1.0] * 32, "long_factor": list(np.linspace(1, 8, 32)),
                        "original_max_position_embeddings": 1024},
}
fig, ax = plt.subplots(figsize=(10, 4))
for label, params in variants.items():
    emb = rope.RotaryEmbedding(params, HD, MAX)
    if params["rope_type"] in ("dynamic", "longrope"):
        emb.update(seq_len=16384)          # these pick frequencies from the sequence length
    ax.semilogy(2 * np.pi / emb.inv_freq, label=f"{label} (attention x{emb.attention_scaling:.3f})")
ax.set_xlabel("pair i"); ax.set_ylabel("wavelength (positions)")
ax.legend(fontsize=8); ax.set_title("wavelength of each rotary pair")
plt.show()
