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
# # 04 · Llama vs Cohere blocks, and what `logit_scale` does
#
# | | Llama | Cohere (Command-R) / Cohere2 |
# |---|---|---|
# | norm | RMSNorm, weight only | LayerNorm (mean-subtracted), weight only |
# | block | sequential: $h = x + A(N_1 x)$, $y = h + M(N_2 h)$ | parallel: $n = N x$, $y = x + A(n) + M(n)$ |
# | RoPE pairs | $(i, i + d/2)$ | $(2i, 2i+1)$ |
# | head | $z = h W^\top$ | $z = s \cdot h W^\top$ with `logit_scale` $s$ (0.0625) |
# | qk-norm | no | Command R+: per-head LayerNorm on q and k |
# | positions | RoPE everywhere | Cohere2: every 4th layer global with no RoPE |

# %%
import time
import numpy as np
import matplotlib.pyplot as plt
import minilm

# %%
from minilm.testing import tiny_checkpoint   # config.json + random scaled-up weights in a temp folder

# %%
import inspect
from minilm.models.llama import LlamaModel
from minilm.models.cohere import CohereModel
print(inspect.getsource(LlamaModel.decoder_layer))
print(inspect.getsource(CohereModel.decoder_layer))

# %% [markdown]
# ## The residual identities, checked on the tape
#
# One tiny random model per family with the same sizes.

# %%
llama = minilm.load(tiny_checkpoint("llama"), progress=False)
cohere = minilm.load(tiny_checkpoint("cohere", use_qk_norm=True), progress=False)
ids = np.random.default_rng(0).integers(3, 256, size=(1, 8))
lt, ct = llama(ids, tape=True).tape, cohere(ids, tape=True).tape

def params(m):
    unique = {id(w): w for w in m.weights.values()}          # tied matrices count once
    return sum(int(np.prod(w.shape)) for w in unique.values())
print(f"parameters: llama {params(llama):,}  cohere {params(cohere):,} (tied head, no post-attention norm)")
print("only in llama: ", sorted({n.split('.', 2)[-1] for n in lt} - {n.split('.', 2)[-1] for n in ct}))
print("only in cohere:", sorted({n.split('.', 2)[-1] for n in ct} - {n.split('.', 2)[-1] for n in lt}))

x, h = lt["embed"], lt["embed"] + lt["layers.0.attn.out"]
print("llama  out = (x + attn) + mlp(norm(x + attn)):",
      np.allclose(lt["layers.0.out"], h + lt["layers.0.mlp.out"], atol=1e-5))
x = ct["embed"]
print("cohere out = x + attn(n) + mlp(n):          ",
      np.allclose(ct["layers.0.out"], x + ct["layers.0.attn.out"] + ct["layers.0.mlp.out"], atol=1e-5))
gate = ct["layers.0.attn_norm"] @ cohere.weights["model.layers.0.mlp.gate_proj.weight"].dequantize().T
print("cohere's MLP reads the same normed input as attention:", np.allclose(gate, ct["layers.0.mlp.gate"], atol=1e-5))

# %% [markdown]
# ## `logit_scale` is a built-in temperature
#
# Cohere multiplies logits by $s$ before sampling, so
# $\mathrm{softmax}(s z / T) = \mathrm{softmax}(z / (T/s))$: with $s = 0.0625$, sampling at
# temperature $T$ behaves like an unscaled model at temperature $16T$. Greedy decoding is
# unaffected (argmax does not care), sampling is. Real Command-R logits are trained with the
# scale in place; here we only see the mechanism.

# %%
from minilm.ops import sampling
scaled = cohere(ids).logits[0, -1]                       # already multiplied by logit_scale
raw = scaled / cohere.config.logit_scale                  # what the head alone produced
rng = np.random.default_rng(0)
fig, axes = plt.subplots(1, 2, figsize=(13, 3.5))
for label, z in [("raw head output z", raw), ("z * logit_scale (what Cohere samples from)", scaled)]:
    p = sampling.softmax(z[None].astype(np.float32))[0]
    entropy = -(p * np.log(p + 1e-30)).sum()
    order = np.argsort(p)[::-1][:20]
    axes[0].plot(p[order], marker=".", label=f"{label}: entropy {entropy:.2f} nats")
    draws = sampling.sample(np.repeat(z[None].astype(np.float32), 2000, axis=0), rng)
    axes[1].hist(draws, bins=64, range=(0, 256), alpha=0.6, label=label)
axes[0].set_title("top-20 token probabilities"); axes[0].legend(fontsize=8)
axes[1].set_title("2000 samples (token ids)"); axes[1].legend(fontsize=8)
plt.show()
print("same greedy token:", int(raw.argmax()) == int(scaled.argmax()))
temps = [0.25, 1.0]
for T in temps:
    a = sampling.softmax((scaled / T)[None])[0]
    b = sampling.softmax((raw / (T / cohere.config.logit_scale))[None])[0]
    print(f"softmax(s*z/{T}) == softmax(z/{T / cohere.config.logit_scale:g}):", np.allclose(a, b, atol=1e-6))
