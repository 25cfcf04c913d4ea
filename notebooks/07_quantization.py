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
# # 07 · Quantized weights
#
# Generating one token reads every weight of the model once, so on a CPU the speed of decoding
# is mostly the number of bytes per weight. A *quantized* format stores each weight as a small
# integer code and keeps a few floats per block of weights to turn codes back into numbers:
#
# $$w \approx d \cdot c + m \qquad \text{(one scale } d \text{ and one offset } m \text{ per block)}$$
#
# minilm runs the formats of three libraries: GGUF's `q8_0`, `q4_0`, `q4_1` (llama.cpp),
# torchao's `int8` and `int4`, bitsandbytes' `fp4` and `nf4`. Each one is a few lines of NumPy in
# `minilm/formats/` (`encode` and `decode`), and `docs/quantization.md` has their formulas and byte
# layouts. This notebook looks at what they do to SmolLM2's weights, why blocks and zero points
# matter, what the bytes look like, what each format costs in accuracy, how a Numba kernel
# reads the same bytes as the NumPy reference, and what the smaller bytes buy on a few matrices.

# %%
import time
import numpy as np
import matplotlib.pyplot as plt
import minilm

# %%
import os
import warnings
from minilm.default_model import default_model_dir, find_default_gguf
from minilm.formats import FORMATS, Weight, quantize

start_notebook = time.perf_counter()
folder = default_model_dir()                    # SmolLM2-135M-Instruct, float32 (converted once from the GGUF)
gguf_path = find_default_gguf()                 # the Q4_1 GGUF the model ships as
model = minilm.load(folder, backend="numba", progress=False)
stored = minilm.load(gguf_path, backend="numba", progress=False)   # the GGUF's blocks, used as stored
numba_ops = model.backend                       # the op namespace of the numba backend

print(f"{'format':9s} {'bits/weight':>11s} {'row multiple':>12s} {'numba modes':>12s}  description")
for name in ["float32", "bfloat16", "float16", "q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4"]:
    fmt = FORMATS[name]
    modes = [m for m in ("exact", "fast") if numba_ops.supports(name, m)]
    modes = modes if fmt.fast else modes[:1]    # a dense format has no fast arithmetic of its own
    print(f"{name:9s} {fmt.bits:11.2f} {fmt.row_multiple():12d} {' '.join(modes) or 'none':>12s}  {fmt.description}")
print()
print("from the GGUF:", stored.weights["model.layers.0.mlp.down_proj.weight"])
print("              ", stored.weights["model.embed_tokens.weight"])

# %% [markdown]
# "row multiple" is what a row's length must be a multiple of: the block (32 for GGUF, 64 for
# bitsandbytes) or `int4`'s group (torchao's default, 128). The numba backend runs every format
# except `float16` (the NumPy backend and the CUDA kernels do run it), and `fp4`/`nf4` only in
# exact mode (see below).
#
# The GGUF holds its 210 decoder matrices as `q4_1` blocks and the embedding (which is also the
# LM head, tied) as `q8_0`: `minilm.load("model.gguf")` keeps those bytes as they are in the
# file. The float32 folder is what the GGUF decodes to.
#
# ## One weight row, every format
#
# Row 0 of layer 5's `down_proj` (1536 weights), quantized and decoded back by each format.
# `int4` uses torchao's default group of 128 weights.

# %%
W = model.weights["model.layers.5.mlp.down_proj.weight"].dequantize()      # float32 [576, 1536]
FORMAT_NAMES = ["q8_0", "int8", "q4_0", "q4_1", "int4", "fp4", "nf4"]
row = W[:1]
decoded = {f: quantize(row, f).dequantize()[0] for f in FORMAT_NAMES}
rms = np.sqrt((row ** 2).mean())
for f, values in decoded.items():
    err = values - row[0]
    print(f"{f:5s} max |error| {np.abs(err).max():.4f}   rms error / rms weight {np.sqrt((err ** 2).mean()) / rms:.4f}")

fig, axes = plt.subplots(len(FORMAT_NAMES), 1, figsize=(11, 9), sharex=True, sharey=True)
span = slice(0, 64)
for ax, f in zip(axes, FORMAT_NAMES):
    ax.plot(row[0, span], "k.-", lw=0.8, label="float32")
    ax.plot(decoded[f][span], "o", mfc="none", color="C1", label=f)
    for edge in range(0, 65, 32):
        ax.axvline(edge - 0.5, color="0.8", lw=0.8)          # GGUF blocks of 32
    ax.legend(loc="upper right", fontsize=8)
axes[-1].set_xlabel("weight index (first 64 of the row; grey lines: blocks of 32)")
plt.tight_layout(); plt.show()

# %% [markdown]
# `q4_1` gives back the row **exactly**. That is not a property of the format but of this model:
# the float32 folder was decoded from the Q4_1 GGUF, so every block of 32 already lies on a grid
# $d \cdot n + m$ whose lowest and highest codes (0 and 15) are the block's min and max, and
# encoding finds the same $d$, $m$ and codes again. Every other format has its own grid and
# rounds. Keep this in mind when reading accuracy numbers on SmolLM2: `q4_1` is free here, and
# the other formats are measured against weights that were already 4-bit.

# %%
q4_1_back = quantize(W, "q4_1").dequantize()
print("q4_1 round trip of SmolLM2's float32 weights is lossless:", np.array_equal(q4_1_back, W))
print("q8_0 round trip is lossless:", np.array_equal(quantize(W, "q8_0").dequantize(), W))

# %% [markdown]
# ## The error, weight by weight
#
# Histograms of (decoded − original) / rms(weights) over the whole matrix (885k weights), for
# SmolLM2's matrix and for a random matrix of the same shape with a heavy tail (Student's t with
# 5 degrees of freedom), which stands in for a checkpoint that was never quantized.

# %%
rng = np.random.default_rng(0)
fresh = (rng.standard_t(5, size=W.shape) * W.std()).astype(np.float32)
fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
bins = np.linspace(-0.8, 0.8, 161)
print(f"{'':6s} {'rms error / rms weight':>24s}")
print(f"{'':6s} {'SmolLM2':>12s} {'fresh':>11s}")
for f in FORMAT_NAMES:
    errors = []
    for ax, M in zip(axes, (W, fresh)):
        e = ((quantize(M, f).dequantize() - M) / np.sqrt((M ** 2).mean())).ravel()
        errors.append(np.sqrt((e ** 2).mean()))
        ax.hist(e, bins=bins, histtype="step", lw=1.2, label=f)
    print(f"{f:6s} {errors[0]:12.4f} {errors[1]:11.4f}")
for ax, title in zip(axes, ("SmolLM2 layer 5 down_proj (already Q4_1 in the GGUF)", "a fresh heavy-tailed matrix")):
    ax.set_yscale("log"); ax.set_title(title); ax.set_xlabel("error / rms(weights)")
axes[0].set_ylabel("weights"); axes[1].legend(ncol=2)
plt.tight_layout(); plt.show()

# %% [markdown]
# The 8-bit formats are about ten times more accurate than the 4-bit ones: four bits fewer
# make the step between codes 16 times coarser. Among the 4-bit formats, `nf4`'s levels follow
# a normal distribution (dense near zero, where most weights are), so its error is lower than
# `fp4`'s, whose levels are a tiny floating-point format. `q4_1` (codes 0..15 between the
# block's min and max) beats `q4_0`, which spends its codes symmetrically around zero. `int4`
# has `q4_1`'s arithmetic but one scale and zero per group of 128 weights instead of per 32
# (and both stored in bfloat16), so its steps are wider than either GGUF format's: fewer bits per
# weight (4.25), more error. On SmolLM2 the `q4_1` histogram is a single spike at 0, and `int4`'s
# groups of 128 (four Q4_1 blocks with four different grids) round again.
#
# ## Why one scale per block, and why a zero point
#
# A scale is chosen so the largest value of its block fits the largest code. One outlier then
# sets the step for every weight that shares its scale. Below, a row of 576 small weights with
# one weight 30x larger, in 4 bits: one scale for the whole row, against one scale per block of
# 32 (`q4_0`).

# %%
rng = np.random.default_rng(1)
x = (rng.standard_normal((1, 576)) * 0.02).astype(np.float32)
x[0, 40] = 0.6                                                # the outlier, in block 1

d_row = np.abs(x).max() / 7                                   # symmetric 4-bit, one scale for the row
per_row = np.clip(np.rint(x / d_row), -8, 7) * d_row
per_block = quantize(x, "q4_0").dequantize()                  # one scale per 32 weights


def rms_error(y):
    return float(np.sqrt(((y - x) ** 2).mean()))


print(f"one scale per row:          rms error {rms_error(per_row):.5f}, "
      f"{np.mean(per_row == 0):.0%} of the weights become exactly 0")
print(f"one scale per block of 32:  rms error {rms_error(per_block):.5f}, "
      f"{np.mean(per_block == 0):.0%} become 0 ({rms_error(per_row) / rms_error(per_block):.1f}x smaller error)")
fig, ax = plt.subplots(figsize=(11, 3))
ax.plot(x[0, :96], "k.-", lw=0.8, label="float32")
ax.plot(per_row[0, :96], "s", mfc="none", label="4 bits, one scale per row")
ax.plot(per_block[0, :96], "o", mfc="none", label="q4_0: one scale per block of 32")
ax.set_ylim(-0.08, 0.08); ax.set_title("first 96 weights (the outlier at index 40 is off the scale)")
ax.legend(fontsize=8); plt.show()

# %% [markdown]
# Only the outlier's own block pays for it. The same reasoning applies to activations in
# fast mode (below), which are quantized in blocks of 32 too.
#
# A symmetric format also wastes codes when a block is one-signed. `q4_0` maps the value of
# largest magnitude to code 0 ($w = d\,(n - 8)$, $d = M / -8$), so an all-positive block only
# ever uses codes 0..8, at most 9 of its 16; `q4_1` stores the block's minimum as an offset $m$
# and spreads all 16 codes between min and max.

# %%
positive = rng.uniform(0.2, 1.0, size=(1, 576)).astype(np.float32)
for f in ("q4_0", "q4_1"):
    weight = quantize(positive, f)
    nibbles = weight.blocks[..., -16:]
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
    err = np.sqrt(((weight.dequantize() - positive) ** 2).mean())
    print(f"all-positive row, {f}: {len(np.unique(codes))} of 16 codes used, rms error {err:.4f}")

# %% [markdown]
# ## Nibbles in bytes
#
# Two 4-bit codes share a byte, and the three libraries disagree on which goes where. To see it,
# we encode values whose codes we know and print the bytes in hex.
#
# **GGUF** (`q4_0`, `q4_1`): a block of 32 is `d` (fp16), `m` (fp16, `q4_1` only), then 16 bytes;
# byte *j* holds element *j* in its low nibble and element *j + 16* in its high nibble.
# The values 0, 1, ..., 15 followed by 15, 14, ..., 0 give $d = 1$, $m = 0$ and the codes
# themselves:

# %%
from minilm.formats import bnb, ggml

block = np.concatenate([np.arange(16), np.arange(15, -1, -1)]).astype(np.float32)[None]
b = quantize(block, "q4_1").blocks[0, 0]                       # 20 bytes
print("q4_1 block:", " ".join(f"{v:02x}" for v in b))
print(f"  bytes 0-1  d = {b[0:2].view(np.float16)[0]}   bytes 2-3  m = {b[2:4].view(np.float16)[0]}")
print("  bytes 4-19:", " ".join(f"{v:02x}" for v in b[4:]), "  (high nibble: element j+16, low: element j)")
codes = block[0].astype(np.uint8)
print("GGUF byte j = element j (low nibble) | element j+16 (high nibble):",
      np.array_equal(b[4:], codes[:16] | (codes[16:] << 4)))

# %% [markdown]
# **bitsandbytes** (`fp4`, `nf4`) packs consecutive elements, the *first* in the high nibble.
# Here the 64 values are NF4's own table entries, so element *i* gets code *i* mod 16:

# %%
table_values = np.tile(bnb.NF4_TABLE, 4)[None]                # 64 values, absmax 1
nf4 = quantize(table_values, "nf4")
print("nf4 codes, first 16 bytes:", " ".join(f"{v:02x}" for v in nf4.codes[0, :16]), "  absmax", nf4.absmax[0, 0])
n = np.arange(64, dtype=np.uint8) % 16
print("bitsandbytes byte i = element 2i (high nibble) | element 2i+1 (low nibble):",
      np.array_equal(nf4.codes[0], (n[0::2] << 4) | n[1::2]))

# %% [markdown]
# **torchao** (`int4`) also packs consecutive elements, but the *first* in the low nibble, and
# its codes are signed: $q = n - 8$ in -8..7, stored as a 4-bit two's complement. So code 0 of
# the range (the minimum) is stored as `8`, and code 8 (the zero point) as `0`:

# %%
ramp = np.tile(np.arange(16, dtype=np.float32), 2)[None]      # one group of 32: min 0, max 15, scale 1
i4 = quantize(ramp, "int4", group_size=32)
print("int4 codes:", " ".join(f"{v:02x}" for v in i4.codes[0]))
signed = np.arange(32) % 16 - 8
print("torchao byte i = element 2i (low nibble) | element 2i+1 (high nibble):",
      np.array_equal(i4.codes[0], (signed[0::2] & 15) | ((signed[1::2] & 15) << 4)))

# %% [markdown]
# Reading one library's bytes with another's order does not fail loudly; it silently returns
# other numbers. That is why the tests compare codes byte for byte with gguf-py, bitsandbytes
# and torchao, and why they include such a swap as a negative control:

# %%
swapped = (b[4:] << 4) | (b[4:] >> 4)                          # the same bytes, nibbles read the other way
wrong = Weight("q4_1", (1, 32), {"blocks": np.concatenate([b[:4], swapped])[None, None]}).dequantize()
print("q4_1 read with swapped nibbles:", wrong[0, :8], "...  equal to the original:", np.array_equal(wrong, block))

# %% [markdown]
# ## Exact and fast mode
#
# A quantized weight can meet its activations in two ways (`minilm.load(..., mode=...)`):
#
# * **exact**: decode the weights to float32 and multiply in float32: what transformers computes
#   when it loads a GGUF (it decodes every tensor at load).
# * **fast**: quantize each row of activations too, to int8 in blocks of 32 (as llama.cpp does),
#   and compute every block pair as an integer dot product, one float multiply-add per block:
#   $y = \sum_b d_w d_x \sum_j c_j q_j \; (+\, m_w s_x)$.
#
# The integer sums are exact; what fast mode changes is the rounding of the activations (and of
# their block scales $d_x$ and sums $s_x$, kept as fp16 like llama.cpp's). SmolLM2's activations
# have a few very large dimensions, and a block of 32 that holds one of them gets a coarse step,
# just like the weight row with an outlier above.

# %%
from minilm.formats.ggml import quantize_activations
from minilm.tokenizer import Tokenizer

tokenizer = Tokenizer.from_pretrained(folder)
sentence = tokenizer.encode("We hold these truths to be self-evident, that all men are created equal")[:8]
tape = model(np.array([sentence]), tape=True).tape
act = tape["layers.5.mlp.act"][0]                             # the input of down_proj, [8, 1536]
q, dx, s = quantize_activations(act)
back = (q * dx[..., None]).reshape(act.shape)
print(f"int8 activations: rms error / rms {np.sqrt(((back - act) ** 2).mean() / (act ** 2).mean()):.4f}")
weight = stored.weights["model.layers.5.mlp.down_proj.weight"]            # Q4_1 from the file
exact = act @ weight.dequantize().T
fast = FORMATS["q4_1"].fast(act, weight)
print(f"q4_1 fast vs exact, layer 5 down_proj: rms deviation / rms output "
      f"{np.sqrt(((fast - exact) ** 2).mean() / (exact ** 2).mean()):.4f}")

# %% [markdown]
# ## What each format costs on the whole model
#
# A small version of `minilm bench --quality` (which runs every format over the whole text with
# windows of 512): the first 64 tokens of the Declaration of Independence, one forward pass per
# variant. For each variant: perplexity, how often its most likely next token is float32's
# (top-1 agreement), the largest logit difference from float32, and the bytes of its weights.
#
# * the GGUF as stored, exact and fast (`minilm.load(gguf_path, mode=...)`);
# * the float32 folder quantized on load (`minilm.load(folder, quantize=...)`, exact mode):
#   the decoder's linear layers only; the embedding and the tied head stay float32, as
#   transformers leaves them with bitsandbytes and torchao. `int4` uses groups of 64: with
#   torchao's default of 128 only `down_proj` (width 1536) is divisible, and the layers of width
#   576 would stay float32 (with a warning), as torchao skips them.
#
# The other formats (`int8`, `q4_1`, `fp4`, `nf4`, fast mode of each) are in `minilm bench
# --quality`; they are left out here to keep the notebook short.

# %%
from minilm.evaluate import reference_text

ids = np.array([tokenizer.encode(reference_text())[:64]])


def weight_bytes(m):
    seen = {}
    for w in m.weights.values():
        for a in (w.arrays.values() if isinstance(w, Weight) else [w]):
            seen[id(a)] = a.nbytes                            # a tied matrix counts once
    return sum(seen.values())


reference_logits = model(ids).logits[0]


def score(m):
    """perplexity, top-1 agreement with float32, max |logit - float32 logit|, weight bytes"""
    logits = m(ids).logits[0].astype(np.float64)                              # [T, V]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -logp[np.arange(ids.shape[1] - 1), ids[0, 1:]].mean()               # token t predicts token t+1
    return {"perplexity": float(np.exp(nll)), "top1": float((logits.argmax(-1) == reference_logits.argmax(-1)).mean()),
            "max_dlogit": float(np.abs(logits - reference_logits).max()), "bytes": weight_bytes(m)}


VARIANTS = {
    "GGUF as stored, fast": (gguf_path, {"mode": "fast"}),
    "q8_0 on load": (folder, {"quantize": "q8_0"}),
    "q4_0 on load": (folder, {"quantize": "q4_0"}),
    "int4 g64 on load": (folder, {"quantize": "int4", "quantize_options": {"group_size": 64}}),
}
results = {"float32": score(model), "GGUF as stored, exact": score(stored)}
for label, (source, kwargs) in VARIANTS.items():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results[label] = score(minilm.load(source, backend="numba", progress=False, **kwargs))
for label, r in results.items():
    print(f"{label:22s} perplexity {r['perplexity']:7.3f}  top-1 = float32 {r['top1']:6.1%}  "
          f"max |dlogit| {r['max_dlogit']:7.1e}  {r['bytes'] / 1e6:5.0f} MB")

fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
labels = list(results)
colors = ["k"] + [f"C{i}" for i in range(len(labels) - 1)]
for i, (label, color) in enumerate(zip(labels, colors)):
    r = results[label]
    axes[0].scatter(r["bytes"] / 1e6, r["perplexity"], color=color, s=50)
    axes[0].annotate(label, (r["bytes"] / 1e6, r["perplexity"]), fontsize=8, xytext=(4, 4 if i % 2 else -12),
                     textcoords="offset points")                # alternate above/below: the GGUF points coincide
axes[0].set_xlabel("weight bytes (MB)"); axes[0].set_ylabel("perplexity (lower is better)")
axes[0].set_title("perplexity against memory, first 64 tokens")
axes[1].barh(labels, [100 * results[label]["top1"] for label in labels], color=colors)
axes[1].set_xlim(0, 100); axes[1].invert_yaxis()
axes[1].set_xlabel("% of positions whose top-1 token is float32's")
plt.tight_layout(); plt.show()

# %% [markdown]
# On this model the GGUF run in exact mode gives float32's logits (same grid, see above; the
# kernels differ from float32's at most in the order of float32 additions): the smallest file
# gives float32's predictions. Fast mode moves the logits
# by about as much as re-quantizing the weights to 8 bits does: that is the price of int8
# activations, and the reason the parity tests use exact mode. Re-quantizing the weights to
# another 4-bit grid is a different matter: SmolLM2's weights already sit on Q4_1's grid, so
# `q4_0` and `int4` add a second 4-bit rounding on top of the first, and a 135M-parameter model
# feels it. Quantize from the original float checkpoint when there is one, and run a GGUF as it
# is stored. 64 tokens is a small sample: read the differences between the 8-bit-like rows as
# noise, and the gap to the 4-bit rows as the result.
#
# ## A Numba kernel beside its NumPy reference
#
# The NumPy reference decodes a whole Q4_1 matrix with array operations. The Numba kernel
# (`minilm/ops/numba_quant_rows.py`) decodes one block of 32 inside the loop that uses it, in
# vector registers, from the same bytes: `load_half` reads `d` and `m` (the `half_at` of the
# reference), `nibbles` splits 16 bytes into 32 codes, low nibbles first (`unpack_nibbles`),
# `widen_u8` turns them into float32, and `scale_add` computes `d * n + m` with the product rounded
# before the sum, like NumPy, so the decoded values are bit-identical.

# %%
import inspect
from minilm.ops import numba_quant, numba_quant_rows, numba_simd

print("# minilm/formats/ggml.py: the reference")
for f in (ggml.half_at, ggml.unpack_nibbles, ggml.decode_q4_1):
    print(inspect.getsource(f))
print("# minilm/ops/numba_quant_rows.py: the kernel's decode")
for f in (numba_quant_rows.decode_block_ggml, numba_quant_rows.decode_row_ggml):
    print(inspect.getsource(f.py_func))
print("# minilm/ops/numba_simd.py: one of its vector operations")
print(inspect.getsource(numba_simd.nibbles._defn))

# %% [markdown]
# Run both on the GGUF's own bytes (layer 5's `down_proj` as stored in the file): a single row,
# then every row through the embedding kernel (which gathers and decodes only the rows asked
# for), then the linear kernels of both modes against their NumPy references.

# %%
o = 7
dst = np.empty((1, weight.shape[1]), dtype=np.float32)
numba_quant_rows.decode_row_ggml((weight.blocks,), o, dst, 0)
reference_row = ggml.decode_q4_1(weight.take_rows([o]))
print("q4_1 decode: kernel == reference:", np.array_equal(dst, reference_row))

every = np.empty(weight.shape, dtype=np.float32)
numba_quant.EMBEDDING["q4_1"](np.arange(weight.shape[0]), weight, every)
print(f"all {weight.shape[0]} rows bit-identical:", np.array_equal(every, weight.dequantize()))

for mode, want in (("exact", exact), ("fast", fast)):
    out = np.empty_like(want)
    numba_quant.LINEAR[("q4_1", mode)](act, weight.with_mode(mode), np.zeros(0, np.float32), out)
    print(f"q4_1 {mode} linear: max |kernel - reference| / max |reference| = "
          f"{np.abs(out - want).max() / np.abs(want).max():.1e}")

# %% [markdown]
# ## Fast mode's integer dot product, instruction by instruction
#
# In fast mode a weight block and an activation block are 32 bytes each, and their dot product
# is llama.cpp's instruction sequence for the CPU at hand, chosen when Numba compiles
# (`numba_simd.SIMD_LEVEL`). With AVX2: `vpmaddubsw` multiplies unsigned bytes by signed bytes
# and adds neighbouring pairs into 16 int16 sums, `vpmaddwd` against ones adds pairs again into 8
# int32 sums, `vcvtdq2ps` + `vfmadd` scale them by $d_w d_x$ into a float32 accumulator. `q4_1`'s
# codes are unsigned (0..15), so they go straight into `vpmaddubsw`'s unsigned operand; signed
# codes (`q8_0`, `q4_0`, `int8`) first go through `vpsignb`. With AVX-512 VNNI (or AVX-VNNI) one
# `vpdpbusd` does what `vpmaddubsw` + `vpmaddwd` do. On AArch64 the kernels use generic LLVM
# (`llvm.vector.partial.reduce.add` of byte products), which LLVM lowers to `sdot` where the CPU
# has the dot-product extension. Numba's own vectoriser emits none of these, so
# `minilm/ops/numba_simd.py` writes each as a Numba `@intrinsic`; `numba_quant.use_simd("vector")`
# and `use_simd("portable")` force the generic vectors or plain integer loops on any CPU
# (`tests/test_numba_quant.py` checks every path against the reference, and
# `tests/test_simd_targets.py` checks each level's instructions for CPUs other than this one).
#
# Below, the kernel's source and the machine code Numba compiles for it on this CPU.

# %%
import re
from numba import njit

print("this CPU's level:", numba_simd.SIMD_LEVEL)
print(inspect.getsource(numba_quant_rows.fast_dot_q4_1_simd.py_func))
print(inspect.getsource(numba_simd.maddubs._defn))


@njit
def probe(blocks, xq, xds, simd):                                 # compiled afresh: cached code has no assembly
    return numba_quant_rows.fast_dot_q4_1_simd(blocks, 0, xq, xds, 0, simd)


probe(quantize(np.ones((1, 64), np.float32), "q4_1").blocks, np.zeros((1, 2, 32), np.int8),
      np.zeros((1, 2, 2), np.float32), numba_quant.SIMD_MARKERS["native"])
asm = probe.inspect_asm(probe.signatures[0])
pattern = r"\s+(vpsrlw|vinserti128|vpand|vpmaddubsw|vpmaddwd|vpdpbusd|vcvtdq2ps|vfmadd\w+|vcvtph2ps|sdot|scvtf|fmla)\s"
block_loop = [line.strip() for line in asm.splitlines() if re.match(pattern, line)]
print("the block loop's SIMD instructions, in order:")
print("\n".join("    " + line for line in block_loop[:8]))

# %% [markdown]
# ## What the smaller bytes buy: a few matrices
#
# A decode step multiplies one row of activations by every matrix, so each weight is read once
# and the time is mostly memory traffic. Here: the three MLP matrices of layers 0-3 (12
# matrices, 10.6M weights), one activation row, in float32, bfloat16, and the GGUF's `q4_1` in
# exact and fast mode, through the numba backend's `linear`. The configurations take turns, round
# after round, and each gets its median round. This is a few matrices, not the model: the 4-bit
# ones may stay in the CPU's cache between rounds, which a whole model would not.
# `docs/benchmarks.md` has whole-model measurements and how they were taken.
#
# The kernels run on one thread here. Every call is a parallel region that ends when its
# slowest thread does, and on a shared machine a thread whose core another process holds waits
# for a time slice at every call: with all threads, such a run would time the scheduler rather
# than the bytes (`generate` watches for this and drops to one thread when that is faster).

# %%
names = [f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(4) for p in ("gate", "up", "down")]
configs = {
    "float32": [model.weights[n] for n in names],
    "bfloat16": [numba_ops.prepare_weight(quantize(model.weights[n].dequantize(), "bfloat16")) for n in names],
    "q4_1 exact": [stored.weights[n] for n in names],
    "q4_1 fast": [numba_ops.prepare_weight(stored.weights[n].with_mode("fast")) for n in names],
}
rows = {width: np.random.default_rng(width).standard_normal((1, width)).astype(np.float32) for width in (576, 1536)}


def one_pass(weights):
    for w in weights:
        numba_ops.linear(rows[w.shape[1]], w)


all_threads = numba_ops.threads()
numba_ops.threads(1)
for weights in configs.values():
    one_pass(weights)                                         # warm up: compile or load the kernels
times = {label: [] for label in configs}
for _ in range(15):
    for label, weights in configs.items():
        start = time.perf_counter()
        for _ in range(5):
            one_pass(weights)
        times[label].append((time.perf_counter() - start) / 5)
median = {label: float(np.median(t)) for label, t in times.items()}
print(f"{len(names)} matrices, {sum(w.shape[0] * w.shape[1] for w in configs['float32']) / 1e6:.1f}M weights, "
      f"one activation row, {numba_ops.threads()} thread")
numba_ops.threads(all_threads)
for label, weights in configs.items():
    megabytes = sum(w.nbytes for w in weights) / 1e6
    print(f"{label:10s} {megabytes:6.1f} MB  {median[label] * 1e3:7.2f} ms per pass  "
          f"{median['float32'] / median[label]:4.1f}x float32's speed")
print("load average (1, 5, 15 min):", " ".join(f"{v:.2f}" for v in os.getloadavg()))
print("Timings on a shared machine vary from run to run: compare the ratios within one run, not the ms.")

# %% [markdown]
# ## Speed
#
# Whole-model decode and prefill speed of every format and mode, against float32, bfloat16,
# transformers and llama.cpp on the same machine, is measured by `minilm bench` (for example
# `minilm bench --backends numba,numba-gguf,numba-gguf-exact,llama.cpp`); the recorded runs and
# their caveats are in `docs/benchmarks.md`.

# %%
print(f"notebook run time {time.perf_counter() - start_notebook:.0f} s")
