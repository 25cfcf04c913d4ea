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
# # 01 · A tour of minilm
#
# minilm is a from-scratch inference engine you can read: every op is a small NumPy function,
# and one `forward` serves both the prompt (prefill) and each new token (decode).
# This notebook loads **SmolLM2-135M-Instruct** (a Llama-architecture model, 30 layers,
# 9 query heads sharing 3 key/value heads), chats with it, then follows one token through
# every layer using the **tape** of named intermediates (see `docs/tape.md`).

# %%
import time
import numpy as np
import matplotlib.pyplot as plt
import minilm

# %%
from minilm.default_model import default_model_dir
from minilm.tokenizer import Tokenizer

folder = default_model_dir()   # converts the bundled GGUF once (about 10 s), then reuses it
model = minilm.load(folder, backend="numpy", progress=False)   # the steppable reference
tokenizer = Tokenizer.from_pretrained(folder)
cfg = model.config
print(folder)
print(f"{cfg.model_type}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
      f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv heads of {cfg.head_dim}, "
      f"vocab {cfg.vocab_size}, rope {cfg.rope_parameters}")

# %% [markdown]
# ## Generate
#
# The chat template turns messages into text; the tokenizer turns text into ids;
# `generate` runs greedy decoding with a KV cache, exactly like transformers' `generate`.

# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
ids = tokenizer.encode(prompt, add_special_tokens=False)
print(repr(prompt))
print(len(ids), "prompt tokens")

start = time.perf_counter()
out = model.generate(np.array([ids]), max_new_tokens=16, do_sample=False)   # greedy; else generation_config.json samples
seconds = time.perf_counter() - start
print(repr(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)))
print(f"{out.shape[1] - len(ids)} tokens in {seconds:.1f} s on the NumPy reference backend")

# %% [markdown]
# ## One forward pass, recorded
#
# `model(ids, tape=True)` records every named intermediate as a NumPy array.
# Names are the same on every backend: `embed`, then per layer `layers.{i}.attn_norm`,
# `layers.{i}.attn.q/k/v`, `attn.q_rope/k_rope`, `attn.mask`, `attn.context`, `attn.out`,
# `mlp_norm` (Llama), `mlp.gate/up/act/out`, `layers.{i}.out`, and finally `final_norm` and `logits`.
# With `tape=False` (the default) nothing is kept.

# %%
result = model(np.array([ids]), tape=True)
tape = result.tape
print(len(tape), "recorded intermediates; layer 0 and the ends:")
for name, value in tape.items():
    if name.startswith("layers.0.") or not name.startswith("layers."):
        print(f"  {name:24s} {str(value.shape):18s} {value.dtype}")

# %% [markdown]
# ### The tape is the model: recompute layer 0 by hand
#
# Llama's block is sequential pre-norm:
# $h = x + \mathrm{Attn}(\mathrm{RMSNorm}(x))$, then $\mathrm{out} = h + \mathrm{MLP}(\mathrm{RMSNorm}(h))$.
# Each piece below uses the same NumPy op the model used, on the recorded inputs.

# %%
from minilm.ops import linear, mlp, norm

w, eps = model.weights, cfg.norm_eps
x = tape["embed"]
attn_norm = norm.rms_norm(x, w["model.layers.0.input_layernorm.weight"], eps)
q = linear.linear(attn_norm, w["model.layers.0.self_attn.q_proj.weight"])
h = x + tape["layers.0.attn.out"]
mlp_norm = norm.rms_norm(h, w["model.layers.0.post_attention_layernorm.weight"], eps)
act = mlp.swiglu(linear.linear(mlp_norm, w["model.layers.0.mlp.gate_proj.weight"]),
                 linear.linear(mlp_norm, w["model.layers.0.mlp.up_proj.weight"]))
out = h + linear.linear(act, w["model.layers.0.mlp.down_proj.weight"])

for name, mine, recorded in [("attn_norm", attn_norm, tape["layers.0.attn_norm"]),
                             ("attn.q", q, tape["layers.0.attn.q"].reshape(q.shape)),
                             ("mlp_norm", mlp_norm, tape["layers.0.mlp_norm"]),
                             ("mlp.act", act, tape["layers.0.mlp.act"]),
                             ("out", out, tape["layers.0.out"])]:
    print(f"layers.0.{name:10s} max |difference| = {np.abs(mine - recorded).max():.1e}")

# %% [markdown]
# ### The residual stream, layer by layer
#
# Each layer *adds* to the residual stream. The size of the last token's vector grows
# through the layers (a few dimensions carry very large "massive activations" in many LLMs).
# The *logit lens* applies the final norm and the LM head to every layer's output: which
# token would the model predict if it stopped there?

# %%
L = cfg.num_hidden_layers
last = [tape[f"layers.{i}.out"][0, -1] for i in range(L)]
lens = []
for i, hidden in enumerate(last):
    logits_i = linear.linear(norm.rms_norm(hidden, w["model.norm.weight"], eps), w["lm_head.weight"])
    lens.append(tokenizer.decode([int(logits_i.argmax())]))

fig, ax = plt.subplots(figsize=(11, 3))
ax.semilogy([np.linalg.norm(h) for h in last], marker="o")
ax.set_xlabel("layer"); ax.set_ylabel("|residual| of the last token")
ax.set_title("residual stream size")
plt.show()
print("logit lens (top token after each layer):")
print(" | ".join(f"{i}:{t!r}" for i, t in enumerate(lens)))
print("model's next token:", repr(tokenizer.decode([int(result.logits[0, -1].argmax())])))

# %% [markdown]
# ## One decode step through every layer
#
# With a cache, the next forward gets **one** token (T = 1). Its query attends over
# every cached key: the mask row is all visible.

# %%
cache = model.new_cache(1)
model(np.array([ids]), cache=cache)
next_id = int(result.logits[0, -1].argmax())
step = model(np.array([[next_id]]), cache=cache, tape=True).tape
for name in ["embed", "layers.0.attn.q_rope", "layers.0.attn.k_rope", "layers.0.attn.mask",
             "layers.0.attn.context", "layers.29.out", "logits"]:
    print(f"{name:22s} {step[name].shape}")
print("cache holds", cache.seq_len, "tokens")

# Which prompt tokens does the new token attend to?  Layer 15, averaged over heads.
layer = 15
keys = cache.layers[layer].keys[:, :cache.seq_len]                     # [1, S, KV, HD]
q = step[f"layers.{layer}.attn.q_rope"]                                 # [1, 1, H, HD]
k = np.repeat(keys, cfg.num_attention_heads // cfg.num_key_value_heads, axis=2)
scores = np.einsum("bthd,bshd->bhts", q, k) * cfg.head_dim ** -0.5
probs = np.exp(scores - scores.max(-1, keepdims=True)); probs /= probs.sum(-1, keepdims=True)
labels = [tokenizer.decode([t]) for t in ids + [next_id]]
fig, ax = plt.subplots(figsize=(11, 2.5))
ax.bar(range(len(labels)), probs[0, :, 0].mean(0))
ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
ax.set_title(f"layer {layer}: attention of the new token {labels[-1]!r}, mean over heads")
plt.show()
