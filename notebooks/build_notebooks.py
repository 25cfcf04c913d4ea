"""Build the teaching notebooks from this one reviewable script.

    python notebooks/build_notebooks.py          # rewrites notebooks/0*.ipynb, outputs cleared

Edit the cells here, not in the .ipynb files. tests/test_notebooks.py executes
every notebook top to bottom (offline, CPU only). Each notebook is also run by
hand in Jupyter; outputs are never committed.
"""
from __future__ import annotations

import os
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
    return new_code_cell(textwrap.dedent(text).strip())


# A tiny random checkpoint, written the way the tests do it (scaled-up weights so that
# RoPE, masks and norms visibly matter). Shared by the notebooks that need no real model.
TINY_CHECKPOINT = code('''
    import json, os, tempfile
    from safetensors.numpy import save_file
    from minilm.config import parse_config
    from minilm.loading import expected_shapes

    TINY = {
        "llama": {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
                  "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        "cohere": {"model_type": "cohere", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 128, "layer_norm_eps": 1e-5, "logit_scale": 0.0625,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
                   "tie_word_embeddings": True, "bos_token_id": 5, "eos_token_id": 2, "pad_token_id": 0},
        "cohere2": {"model_type": "cohere2", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "max_position_embeddings": 128, "layer_norm_eps": 1e-5, "logit_scale": 0.0625,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "sliding_window": 4,
                    "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
                    "tie_word_embeddings": True, "bos_token_id": 5, "eos_token_id": 2, "pad_token_id": 0},
    }

    def tiny_checkpoint(family, seed=0, **overrides):
        """config.json + random safetensors in a temporary folder; returns the folder."""
        config = {**TINY[family], **overrides}
        folder = tempfile.mkdtemp(prefix=f"tiny-{family}-")
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        rng = np.random.default_rng(seed)
        tensors = {}
        for name, shape in expected_shapes(parse_config(config)).items():
            if "norm" in name:
                w = 1 + 0.3 * rng.uniform(-1, 1, shape)       # norm weights 1 +- 0.3
            elif "embed_tokens" in name:
                w = rng.standard_normal(shape)                # embeddings ~ N(0, 1)
            else:
                w = 0.2 * rng.standard_normal(shape)          # linears ~ N(0, 0.2)
            tensors[name] = w.astype(np.float32)
        if config["tie_word_embeddings"]:
            del tensors["lm_head.weight"]                     # tied: the embedding matrix is the head
        save_file(tensors, os.path.join(folder, "model.safetensors"))
        return folder
''')

IMPORTS = code('''
    import time
    import numpy as np
    import matplotlib.pyplot as plt
    import minilm
''')

# --------------------------------------------------------------------------------------------
TOUR = [
    md('''
        # 01 · A tour of minilm

        minilm is a from-scratch inference engine you can read: every op is a small NumPy function,
        and one `forward` serves both the prompt (prefill) and each new token (decode).
        This notebook loads **SmolLM2-135M-Instruct** (a Llama-architecture model, 30 layers,
        9 query heads sharing 3 key/value heads), chats with it, then follows one token through
        every layer using the **tape** of named intermediates (see `docs/tape.md`).
    '''),
    IMPORTS,
    code('''
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
    '''),
    md('''
        ## Generate

        The chat template turns messages into text; the tokenizer turns text into ids;
        `generate` runs greedy decoding with a KV cache, exactly like transformers' `generate`.
    '''),
    code('''
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        print(repr(prompt))
        print(len(ids), "prompt tokens")

        start = time.perf_counter()
        out = model.generate(np.array([ids]), max_new_tokens=16)
        seconds = time.perf_counter() - start
        print(repr(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)))
        print(f"{out.shape[1] - len(ids)} tokens in {seconds:.1f} s on the NumPy reference backend")
    '''),
    md('''
        ## One forward pass, recorded

        `model(ids, tape=True)` records every named intermediate as a NumPy array.
        Names are the same on every backend: `embed`, then per layer `layers.{i}.attn_norm`,
        `layers.{i}.attn.q/k/v`, `attn.q_rope/k_rope`, `attn.mask`, `attn.context`, `attn.out`,
        `mlp_norm` (Llama), `mlp.gate/up/act/out`, `layers.{i}.out`, and finally `final_norm` and `logits`.
        With `tape=False` (the default) nothing is kept.
    '''),
    code('''
        result = model(np.array([ids]), tape=True)
        tape = result.tape
        print(len(tape), "recorded intermediates; layer 0 and the ends:")
        for name, value in tape.items():
            if name.startswith("layers.0.") or not name.startswith("layers."):
                print(f"  {name:24s} {str(value.shape):18s} {value.dtype}")
    '''),
    md('''
        ### The tape is the model: recompute layer 0 by hand

        Llama's block is sequential pre-norm:
        $h = x + \\mathrm{Attn}(\\mathrm{RMSNorm}(x))$, then $\\mathrm{out} = h + \\mathrm{MLP}(\\mathrm{RMSNorm}(h))$.
        Each piece below uses the same NumPy op the model used, on the recorded inputs.
    '''),
    code('''
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
    '''),
    md('''
        ### The residual stream, layer by layer

        Each layer *adds* to the residual stream. The size of the last token's vector grows
        through the layers (a few dimensions carry very large "massive activations" in many LLMs).
        The *logit lens* applies the final norm and the LM head to every layer's output: which
        token would the model predict if it stopped there?
    '''),
    code('''
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
    '''),
    md('''
        ## One decode step through every layer

        With a cache, the next forward gets **one** token (T = 1). Its query attends over
        every cached key: the mask row is all visible.
    '''),
    code('''
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
    '''),
]

# --------------------------------------------------------------------------------------------
NORMS_ROPE = [
    md('''
        # 02 · Normalisation and rotary position embeddings

        Two small ops that every layer uses, and that are easy to get subtly wrong.
    '''),
    IMPORTS,
    code('''
        from minilm.ops import norm, rope
        rng = np.random.default_rng(0)
    '''),
    md('''
        ## RMSNorm (Llama) and LayerNorm (Cohere)

        $$\\mathrm{RMSNorm}(x) = w \\odot \\frac{x}{\\sqrt{\\tfrac1D\\sum_i x_i^2 + \\varepsilon}} \\qquad
          \\mathrm{LayerNorm}_{\\text{Cohere}}(x) = w \\odot \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\varepsilon}}$$

        RMSNorm does not subtract the mean; Cohere's LayerNorm does, and has no bias.
        $\\varepsilon$ sits inside the square root; the weight multiplies after the division.
    '''),
    code('''
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
    '''),
    md('''
        ## RoPE: rotating pairs of dimensions

        Pair $i$ of a query or key at position $p$ is rotated by the angle $p\\,\\theta_i$ with
        $\\theta_i = b^{-2i/d}$ ($b$ = `rope_theta`, $d$ = head dim):

        $$\\begin{pmatrix}a'\\\\ b'\\end{pmatrix} =
          \\begin{pmatrix}\\cos p\\theta_i & -\\sin p\\theta_i\\\\ \\sin p\\theta_i & \\cos p\\theta_i\\end{pmatrix}
          \\begin{pmatrix}a\\\\ b\\end{pmatrix}$$

        Early pairs spin fast, late pairs slowly. Below, the pair (1, 0) for positions 0..23.
    '''),
    code('''
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
    '''),
    md('''
        **Why it works: scores depend only on the distance.** A rotation by $p\\theta$ on the query
        and $s\\theta$ on the key gives $q'\\cdot k' = q^\\top R((s-p)\\theta)\\,k$.
    '''),
    code('''
        q = rng.standard_normal((1, 1, 1, HD)).astype(np.float32)
        k = rng.standard_normal((1, 1, 1, HD)).astype(np.float32)
        def rotated(v, position):
            c, s = rot.cos_sin(np.array([[position]]))
            return rope.apply_rope(v, c, s, interleaved=False)
        for p in [0, 10, 50]:
            print(f"query at {p:2d}, key at {p + 3:2d}: score = {float((rotated(q, p) * rotated(k, p + 3)).sum()):+.5f}")
    '''),
    md('''
        ## Half-split (Llama) vs interleaved (Cohere) pairing

        Llama rotates dimension $i$ with $i + d/2$; Cohere rotates $2i$ with $2i+1$.
        Same angles, different pairs: the two are equal up to a permutation of the head
        dimensions, but loading Cohere weights with the Llama pairing gives wrong outputs.
    '''),
    code('''
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
    '''),
    md('''
        ## RoPE scaling variants

        Long-context models stretch the slow (low-frequency) pairs so that unseen positions
        map to angles seen in training. Each `rope_type` changes $\\theta_i$ differently:
        `linear` divides all by the factor, `dynamic` (NTK) grows the base with the sequence,
        `llama3` and `yarn` interpolate only the slow pairs (yarn also scales attention),
        `longrope` divides by per-pair factors.
    '''),
    code('''
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
    '''),
]

# --------------------------------------------------------------------------------------------
ATTENTION = [
    md('''
        # 03 · Attention: GQA, masks, Cohere2's global layers, heatmaps

        $$\\mathrm{Attn}(Q,K,V) = \\mathrm{softmax}\\!\\Big(\\frac{QK^\\top}{\\sqrt{d}} + M\\Big)V,
          \\qquad M_{ij} = 0 \\text{ if key } j \\text{ is visible to query } i, \\text{ else } -\\infty$$
    '''),
    IMPORTS,
    TINY_CHECKPOINT,
    md('''
        ## Grouped-query attention (GQA)

        With $H$ query heads and $KV < H$ key/value heads, query head $h$ reads kv head
        $\\lfloor h / (H/KV) \\rfloor$: each kv head is **repeated** (not tiled) for $H/KV$ query heads.
        The KV cache shrinks by $H/KV$.
    '''),
    code('''
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
    '''),
    md('''
        ## Causal, sliding-window and padding masks

        `minilm.masks` draws the visibility rule of every layer
        ($j \\le i$, key not padding, and for sliding layers $j > i - W$).
        The tiny Cohere2 model has window $W = 4$: layers 0-2 slide, layer 3 is global.
        The first two positions are left padding.
    '''),
    code('''
        from minilm.masks import mask_pictures, render_text, save_png
        from IPython.display import Image

        folder = tiny_checkpoint("cohere2")
        padding = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
        print(render_text(folder, length=10, attention_mask=padding))
        Image(save_png(folder, os.path.join(folder, "masks.png"), length=10, attention_mask=padding))
    '''),
    md('''
        ## Cohere2's global layers have no positional encoding

        Every 4th layer of Command R7B attends to the whole sequence but skips RoPE (NoPE):
        its scores $q\\cdot k$ depend on content only, so word order reaches it only through the causal
        mask and the sliding layers before it. The tape shows it: layer 3 records no `q_rope`.
    '''),
    code('''
        model = minilm.load(folder, backend="numpy", progress=False)
        ids = np.random.default_rng(1).integers(3, 256, size=(1, 12))
        tape = model(ids, tape=True).tape
        for i in range(model.config.num_hidden_layers):
            names = [n.split(".", 2)[2] for n in tape if n.startswith(f"layers.{i}.attn.")]
            print(f"layer {i} ({model.config.layer_types[i]}):", ", ".join(names))

        # RoPE is relative and NoPE ignores positions: shifting every position by 100 changes nothing.
        shifted = model(ids, position_ids=np.arange(12)[None] + 100).logits
        print("max |logits(shifted positions) - logits| =", float(np.abs(shifted - model(ids).logits).max()))
    '''),
    md('''
        ## Attention heatmaps from the tape

        The tape holds the rotated queries and keys and the mask of every layer, so the
        attention probabilities can be recomputed exactly; multiplying them by $V$ gives back
        the recorded `attn.context`, which checks the recomputation.
    '''),
    code('''
        def attention_probs(tape, cfg, layer):
            """softmax(q k^T / sqrt(d) + mask) per head: [B, H, T, S], from the tape of a prefill."""
            p = f"layers.{layer}.attn."
            q = tape.get(p + "q_rope", tape[p + "q"])
            k = tape.get(p + "k_rope", tape[p + "k"])
            k = np.repeat(k, cfg.num_attention_heads // cfg.num_key_value_heads, axis=2)
            scores = np.einsum("bthd,bshd->bhts", q, k) * cfg.head_dim ** -0.5
            scores = np.where(tape[p + "mask"][:, None], scores, -np.inf)
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            return probs / probs.sum(-1, keepdims=True)

        cfg = model.config
        for layer in (0, 3):
            probs = attention_probs(tape, cfg, layer)
            v = np.repeat(tape[f"layers.{layer}.attn.v"], cfg.num_attention_heads // cfg.num_key_value_heads, axis=2)
            context = np.einsum("bhts,bshd->bthd", probs, v).reshape(tape[f"layers.{layer}.attn.context"].shape)
            print(f"layer {layer}: probs @ v vs recorded context, max diff "
                  f"{np.abs(context - tape[f'layers.{layer}.attn.context']).max():.1e}")

        fig, axes = plt.subplots(2, 4, figsize=(13, 6.5))
        for row, layer in enumerate((0, 3)):
            probs = attention_probs(tape, cfg, layer)
            for h in range(4):
                axes[row, h].imshow(probs[0, h], cmap="magma", vmin=0, vmax=1)
                axes[row, h].set_title(f"layer {layer} ({cfg.layer_types[layer][:7]}) head {h}", fontsize=9)
                axes[row, h].set_xlabel("key"); axes[row, h].set_ylabel("query")
        plt.tight_layout(); plt.show()
    '''),
    md('''
        ### The same on a real model

        SmolLM2's heads show typical patterns: many heads park attention on the first token
        (an "attention sink"), some look at the previous token.
    '''),
    code('''
        from minilm.default_model import default_model_dir
        from minilm.tokenizer import Tokenizer
        real_folder = default_model_dir()
        real = minilm.load(real_folder, backend="numpy", progress=False)
        tok = Tokenizer.from_pretrained(real_folder)
        text_ids = tok.encode("The quick brown fox jumps over the lazy dog because it was")
        labels = [tok.decode([t]) for t in text_ids]
        real_tape = real(np.array([text_ids]), tape=True).tape
        layer = 12
        probs = attention_probs(real_tape, real.config, layer)
        fig, axes = plt.subplots(1, 3, figsize=(15, 5))
        for ax, h in zip(axes, (0, 3, 7)):
            ax.imshow(probs[0, h], cmap="magma", vmin=0, vmax=1)
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_title(f"SmolLM2 layer {layer}, head {h}")
        plt.tight_layout(); plt.show()
    '''),
]

# --------------------------------------------------------------------------------------------
LLAMA_VS_COHERE = [
    md('''
        # 04 · Llama vs Cohere blocks, and what `logit_scale` does

        | | Llama | Cohere (Command-R) / Cohere2 |
        |---|---|---|
        | norm | RMSNorm, weight only | LayerNorm (mean-subtracted), weight only |
        | block | sequential: $h = x + A(N_1 x)$, $y = h + M(N_2 h)$ | parallel: $n = N x$, $y = x + A(n) + M(n)$ |
        | RoPE pairs | $(i, i + d/2)$ | $(2i, 2i+1)$ |
        | head | $z = h W^\\top$ | $z = s \\cdot h W^\\top$ with `logit_scale` $s$ (0.0625) |
        | qk-norm | no | Command R+: per-head LayerNorm on q and k |
        | positions | RoPE everywhere | Cohere2: every 4th layer global with no RoPE |
    '''),
    IMPORTS,
    TINY_CHECKPOINT,
    code('''
        import inspect
        from minilm.models.llama import LlamaModel
        from minilm.models.cohere import CohereModel
        print(inspect.getsource(LlamaModel.decoder_layer))
        print(inspect.getsource(CohereModel.decoder_layer))
    '''),
    md('''
        ## The residual identities, checked on the tape

        One tiny random model per family with the same sizes.
    '''),
    code('''
        llama = minilm.load(tiny_checkpoint("llama"), progress=False)
        cohere = minilm.load(tiny_checkpoint("cohere", use_qk_norm=True), progress=False)
        ids = np.random.default_rng(0).integers(3, 256, size=(1, 8))
        lt, ct = llama(ids, tape=True).tape, cohere(ids, tape=True).tape

        def params(m):
            unique = {id(a): a for a in m.weights.values()}          # tied matrices count once
            return sum(a.size for a in unique.values())
        print(f"parameters: llama {params(llama):,}  cohere {params(cohere):,} (tied head, no post-attention norm)")
        print("only in llama: ", sorted({n.split('.', 2)[-1] for n in lt} - {n.split('.', 2)[-1] for n in ct}))
        print("only in cohere:", sorted({n.split('.', 2)[-1] for n in ct} - {n.split('.', 2)[-1] for n in lt}))

        x, h = lt["embed"], lt["embed"] + lt["layers.0.attn.out"]
        print("llama  out = (x + attn) + mlp(norm(x + attn)):",
              np.allclose(lt["layers.0.out"], h + lt["layers.0.mlp.out"], atol=1e-5))
        x = ct["embed"]
        print("cohere out = x + attn(n) + mlp(n):          ",
              np.allclose(ct["layers.0.out"], x + ct["layers.0.attn.out"] + ct["layers.0.mlp.out"], atol=1e-5))
        gate = ct["layers.0.attn_norm"] @ cohere.weights["model.layers.0.mlp.gate_proj.weight"].T
        print("cohere's MLP reads the same normed input as attention:", np.allclose(gate, ct["layers.0.mlp.gate"], atol=1e-5))
    '''),
    md('''
        ## `logit_scale` is a built-in temperature

        Cohere multiplies logits by $s$ before sampling, so
        $\\mathrm{softmax}(s z / T) = \\mathrm{softmax}(z / (T/s))$: with $s = 0.0625$, sampling at
        temperature $T$ behaves like an unscaled model at temperature $16T$. Greedy decoding is
        unaffected (argmax does not care), sampling is. Real Command-R logits are trained with the
        scale in place; here we only see the mechanism.
    '''),
    code('''
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
    '''),
]

# --------------------------------------------------------------------------------------------
KERNELS = [
    md('''
        # 05 · One op, three implementations

        Every op exists three times with the same signature (`minilm/ops/__init__.py`):
        the NumPy reference, a Numba CPU kernel, and a CUDA C kernel in `kernels/`.
        Without a GPU, `backend="cuda-emulated"` runs the unmodified CUDA source on a CPU harness
        (slow, but the real kernel code). This notebook puts RMSNorm side by side, checks the three
        against each other, times them, then runs a whole tiny model on every backend.
    '''),
    IMPORTS,
    TINY_CHECKPOINT,
    code('''
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
    '''),
    md('''
        ## RMSNorm in NumPy, Numba and CUDA

        $y = w \\odot x / \\sqrt{\\mathrm{mean}(x^2) + \\varepsilon}$, one row at a time.
    '''),
    code('''
        print(inspect.getsource(norm.rms_norm))
        if "numba" in backends:
            from minilm.ops import numba_norm
            for fn in ("rms_norm_row", "rms_norm_rows", "rms_norm"):     # kernel, parallel rows, wrapper
                f = getattr(numba_norm, fn, None)
                if f is not None:
                    print(inspect.getsource(getattr(f, "py_func", f)))
    '''),
    code('''
        from minilm.cuda import registry
        print(registry.module_file("rms_norm").read_text())       # kernels/rms_norm.cu, shipped with minilm
    '''),
    md('''
        ## Do they agree?
    '''),
    code('''
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 576)).astype(np.float32)
        w = (1 + 0.3 * rng.standard_normal(576)).astype(np.float32)
        reference = norm.rms_norm(x, w, 1e-5)
        results = {}
        for name, ops in backends.items():
            y = ops.to_numpy(ops.rms_norm(ops.asarray(x), ops.asarray(w), 1e-5))
            results[name] = y
            print(f"{name:14s} max |y - numpy| = {np.abs(y - reference).max():.1e}")
    '''),
    md('''
        ## Timings

        Medians of repeated calls on this machine. The emulated CUDA path runs every GPU thread
        as a CPU fiber (and, by default, every launch twice in opposite thread orders to catch
        missing barriers): it is a correctness tool, not a fast path.
    '''),
    code('''
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
    '''),
    md('''
        ## The whole model on every backend

        The model code is identical; only the op namespace changes. A tiny Cohere2 model
        (sliding window 4) decodes past its window on each backend; logits must agree with NumPy.
    '''),
    code('''
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
    '''),
]

# --------------------------------------------------------------------------------------------
PARITY = [
    md('''
        # 06 · Parity: layer-by-layer error against transformers

        `minilm.parity.parity_report` runs minilm and transformers (float32, eager attention) on the
        same checkpoint and prompt, for the prefill and a few cached greedy decode steps.
        transformers' intermediates are captured with forward hooks and named like minilm's tape,
        so every sub-step of every layer gets two numbers:

        $$\\text{max\\_abs} = \\max |a - b|, \\qquad \\text{max\\_rel} = \\frac{\\max |a - b|}{\\max |b|}$$

        The same report is the command `minilm parity --model M`.
    '''),
    IMPORTS,
    code('''
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
        print("\\n".join(report.format(stages=["prefill"]).splitlines()[:45]))
    '''),
    md('''
        ## Errors along the forward pass

        Absolute errors grow in the layers where a few residual dimensions become very large
        (SmolLM2 has such "massive activations"); relative to the tensor's scale the error stays at
        float32 rounding level ($\\sim 10^{-6}$) all the way to the logits. That is why the threshold
        applies to `max_rel` by default.
    '''),
    code('''
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
    '''),
    md('''
        ## Decode steps and greedy tokens

        Both engines are fed transformers' greedy token at each step. If a token ever differs,
        the report gives the gap between the two best logits: a gap as small as the float noise is
        a harmless near tie; a large gap with intermediates already over the threshold is a bug.
    '''),
    code('''
        for stage in report.stages:
            errors = report.errors(stage, "rel")
            worst = max(errors, key=errors.get)
            print(f"{stage:9s} worst max_rel {errors[worst]:.1e} at {worst}")
        for t in report.tokens:
            print(f"after {t.stage:9s} transformers {t.reference_token:6d} minilm {t.minilm_token:6d} "
                  f"top-2 gap {t.reference_gap:.3f}  logits max_abs {t.logits_max_abs:.1e}")
        print("report ok:", report.ok)
    '''),
    md('''
        ## A negative control: break one weight, find it

        Scale one matrix of the minilm copy by 1.001 (a 0.1% error, far below what you could see in
        the generated text). The report must name exactly that layer and sub-step as the first jump.
    '''),
    code('''
        name = "model.layers.17.mlp.up_proj.weight"
        original = ours.weights[name]
        ours.weights[name] = original * np.float32(1.001)
        try:
            broken = parity_report(folder, decode_steps=0, model=ours, hf_model=reference)
        finally:
            ours.weights[name] = original
        print("first jump:", broken.first_jump)
        fig, ax = plt.subplots(figsize=(13, 3.5))
        broken.plot("prefill", ax=ax)
        plt.show()
    '''),
]

NOTEBOOKS = {
    "01_tour.ipynb": TOUR,
    "02_norms_and_rope.ipynb": NORMS_ROPE,
    "03_attention.ipynb": ATTENTION,
    "04_llama_vs_cohere.ipynb": LLAMA_VS_COHERE,
    "05_kernels.ipynb": KERNELS,
    "06_parity.ipynb": PARITY,
}


def build(folder: str = HERE) -> list[str]:
    paths = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[nbformat.from_dict(dict(c)) for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name.split('_')[0]}-{i:02d}"     # stable ids: rebuilding gives no diff
        nbformat.validate(nb)
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for path in build():
        print("wrote", os.path.relpath(path))
