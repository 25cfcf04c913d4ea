"""Numba kernels for quantized weights: linear (GEMV / matmul) and embedding, exact and fast.

Idea. Decoding a token streams every weight once, so bytes per weight set the
speed: a 4-bit format reads 5-8x fewer bytes than float32. The kernels read
the Weight's arrays as stored (GGUF blocks straight from the file) and never
build a float32 copy of a matrix:

  exact  each block is decoded in registers to the float32 values the NumPy
         decode gives and multiplied by float32 activations (what transformers
         computes on a GGUF checkpoint). numba_quant_rows.py decodes with
         generic LLVM vector code (vpmovzxbd, vcvtdq2ps, vfmadd) that compiles
         for any CPU.
  fast   the activations are quantized once per call to int8 blocks of 32
         (llama.cpp's block_q8_1) and every block pair is an integer dot
         product, then one float multiply-add per block: llama.cpp's
         arithmetic and its instruction sequence for the CPU at hand, chosen
         when compiling (numba_simd.SIMD_LEVEL: vpdpbusd with AVX-512 VNNI,
         vpmaddubsw with AVX2, sdot on AArch64). `use_simd("vector")` forces
         the generic LLVM vectors and `use_simd("portable")` plain loops (tests).

Decode (N <= 8 rows of x) is a GEMV: threads split the weight rows (prange)
and each row is streamed once. Prefill (N > 8) is compute-bound: in exact
mode each thread job decodes 32 weight rows into a float32 tile and runs
numba_linear's 6x4 register tiles over it; in fast mode each job walks 8
activation rows at a time over its 32 weight rows (both stay in L1), and
every unpacked weight block meets 4 activation rows.

`benchmark(gguf_path)` measures all of this on a GGUF model against the
float32 and bf16 kernels of numba_linear (and llama.cpp, if installed).

The contract (what a backend wires in):

    LINEAR[(format, mode)](x2, weight, bias, out)
        x2 float32 [N, IN] C-contiguous; weight a minilm.formats.Weight;
        bias float32 [OUT] or float32 [0] for none; out float32 [N, OUT], written.
    EMBEDDING[format](ids, weight, out)       ids int64 [N] -> out float32 [N, D] = decode(weight)[ids]
    prepare(weight) -> Weight                 once at load: checks the arrays fit the kernels
                                              (contiguous, shapes; fast mode's IN % 32) and
                                              returns a Weight whose arrays they read directly

No per-call allocation: fast mode's int8 activations live in one buffer that
grows to the largest (N, IN) seen. Kernels hold the GIL, so Python threads
cannot share the buffer at the same time.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from ..formats import UnsupportedFormatError, Weight
from ..formats.bnb import TABLES
from .numba_linear import BLOCK_O, GEMV_MAX_ROWS, TILE_N, TILE_O, dot, matmul_tile
from .numba_math import FASTMATH
from .numba_quant_rows import decode_row, exact_dot, fast_dot, fast_dot4, in_features
from .numba_simd import MARKER_DTYPES, SIMD_LEVEL, round_to_half

QK = 32
ROWS_X = 8           # fast prefill: activation rows a job pairs with its weight rows at a time (L1-sized)

KERNEL = dict(error_model="numpy", fastmath=FASTMATH, cache=True)


# --- activations for fast mode -------------------------------------------------------------

@njit(error_model="numpy", inline="always", cache=True)
def quantize_activation_row(x2, n, xq, xds, nb):
    """Row n of x2 -> xq[n, :nb] int8 and xds[n, :nb] = (d, s): llama.cpp's quantize_row_q8_1
    on AVX2: a = max|x|, d = a/127, q = round_half_even(x * 127/a), d and s = d * sum q rounded
    to fp16 (kept here as float32)."""
    size = xq.shape[2]
    for b in range(nb):
        amax = np.float32(0.0)
        for j in range(size):
            amax = max(amax, abs(x2[n, b * size + j]))
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        total = 0
        for j in range(size):
            q = np.rint(x2[n, b * size + j] * inv)
            xq[n, b, j] = np.int8(q)
            total += np.int32(q)
        d = amax / np.float32(127.0)
        xds[n, b, 0] = round_to_half(d)
        xds[n, b, 1] = round_to_half(d * np.float32(total))


# --- drivers: the same for every format (numba_quant_rows picks the row functions by type) ----------

@njit(**KERNEL)
def check_shapes(x2, w, out):
    if x2.shape[1] != in_features(w) or out.shape[0] != x2.shape[0] or out.shape[1] != w[0].shape[0]:
        raise ValueError("quantized linear: x2 [N, IN], weight [OUT, IN] and out [N, OUT] do not match")


@njit(**KERNEL)
def check_fast_shapes(x2, w, out, xq):
    check_shapes(x2, w, out)
    if x2.shape[1] % xq.shape[2] or x2.shape[0] > xq.shape[0] or x2.shape[1] // xq.shape[2] > xq.shape[1]:
        raise ValueError("quantized linear, fast mode: IN must be a multiple of 32 and fit the activation buffer")


@njit(parallel=True, **KERNEL)
def gemv_exact(x2, w, bias, out):
    """Decode: x2 [N <= 8, IN] @ W^T + bias -> out [N, OUT]; threads split W's rows, each read once."""
    check_shapes(x2, w, out)
    for o in prange(w[0].shape[0]):
        b0 = bias[o] if bias.size > 0 else np.float32(0.0)
        for n in range(x2.shape[0]):
            out[n, o] = exact_dot(w, o, x2, n) + b0


@njit(parallel=True, **KERNEL)
def gemv_fast(x2, w, bias, out, xq, xds, simd):
    """Decode in llama.cpp's arithmetic: x2 quantized once (serially: N <= 8 rows), then threads split W's rows."""
    check_fast_shapes(x2, w, out, xq)
    nb = x2.shape[1] // xq.shape[2]
    for n in range(x2.shape[0]):
        quantize_activation_row(x2, n, xq, xds, nb)
    for o in prange(w[0].shape[0]):
        b0 = bias[o] if bias.size > 0 else np.float32(0.0)
        for n in range(x2.shape[0]):
            out[n, o] = fast_dot(w, o, xq, xds, n, simd) + b0


@njit(**KERNEL)
def tile_matmul(x, tile, bias, out, o_lo):
    """out[:, o_lo:o_lo+R] = x @ tile^T + bias[o_lo:o_lo+R], tile float32 [R, IN]: numba_linear's
    6x4 register tiles, single dot products for the leftover rows and columns."""
    rows, N = tile.shape[0], x.shape[0]
    out_part, bias_part = out[:, o_lo:o_lo + rows], bias[o_lo:o_lo + rows]   # an empty bias stays empty
    full_n, full_o = N - N % TILE_N, rows - rows % TILE_O
    for n0 in range(0, full_n, TILE_N):
        for o0 in range(0, full_o, TILE_O):
            matmul_tile(x, n0, tile, o0, bias_part, out_part)
    for o in range(rows):
        b0 = bias_part[o] if bias_part.size > 0 else np.float32(0.0)
        for n in range(full_n if o < full_o else 0, N):
            out_part[n, o] = dot(x[n], tile[o]) + b0


@njit(parallel=True, **KERNEL)
def matmul_exact(x2, w, bias, out):
    """Prefill: each job decodes BLOCK_O rows of W into a float32 tile and multiplies every row of x by it."""
    check_shapes(x2, w, out)
    OUT = w[0].shape[0]
    for job in prange((OUT + BLOCK_O - 1) // BLOCK_O):
        o_lo, o_hi = job * BLOCK_O, min(job * BLOCK_O + BLOCK_O, OUT)
        tile = np.empty((o_hi - o_lo, x2.shape[1]), dtype=np.float32)
        for o in range(o_lo, o_hi):
            decode_row(w, o, tile, o - o_lo)
        tile_matmul(x2, tile, bias, out, o_lo)


@njit(parallel=True, **KERNEL)
def matmul_fast(x2, w, bias, out, xq, xds, simd):
    """Prefill in llama.cpp's arithmetic: all rows of x quantized (threads split them), then each
    job takes BLOCK_O weight rows against ROWS_X activation rows at a time (both in L1), every
    unpacked weight block meeting 4 activation rows."""
    check_fast_shapes(x2, w, out, xq)
    N, OUT, nb = x2.shape[0], w[0].shape[0], x2.shape[1] // xq.shape[2]
    for n in prange(N):
        quantize_activation_row(x2, n, xq, xds, nb)
    full_n = N - N % 4
    for job in prange((OUT + BLOCK_O - 1) // BLOCK_O):
        o_lo, o_hi = job * BLOCK_O, min(job * BLOCK_O + BLOCK_O, OUT)
        for n0 in range(0, N, ROWS_X):
            for o in range(o_lo, o_hi):
                b0 = bias[o] if bias.size > 0 else np.float32(0.0)
                for n in range(n0, min(n0 + ROWS_X, full_n), 4):
                    y0, y1, y2, y3 = fast_dot4(w, o, xq, xds, n, simd)
                    out[n, o], out[n + 1, o], out[n + 2, o], out[n + 3, o] = y0 + b0, y1 + b0, y2 + b0, y3 + b0
                if max(n0, full_n) < min(n0 + ROWS_X, N):
                    # The last N % 4 rows: rows N-4 .. N-1 again (N > 8), keeping the new ones. Not
                    # fast_dot: its decode code inlined here made LLVM compile this loop 1.6x slower.
                    last = fast_dot4(w, o, xq, xds, N - 4, simd)
                    for n in range(full_n, N):
                        out[n, o] = last[n - (N - 4)] + b0


@njit(**KERNEL)
def embedding_rows(ids, w, out):
    """out[n] = W[ids[n]] decoded (a copy of N rows: one thread is enough)."""
    for n in range(ids.size):
        if not 0 <= ids[n] < w[0].shape[0] or out.shape[1] != in_features(w):
            raise IndexError("quantized embedding: token id out of range, or out's width does not match")
        decode_row(w, ids[n], out, n)


# --- fast mode's activation buffer and the instruction-set choice --------------------------------

SIMD_MARKERS = {name: np.zeros(0, dtype=dtype) for name, dtype in MARKER_DTYPES.items()}
SIMD = [SIMD_MARKERS["native"]]                                  # the marker the fast kernels get
ACTIVATIONS = [np.zeros((GEMV_MAX_ROWS, 64, QK), dtype=np.int8), np.zeros((GEMV_MAX_ROWS, 64, 2), dtype=np.float32)]


def use_simd(name: str) -> str:
    """Choose the fast kernels' integer dot products: "native" (this CPU's level, SIMD_LEVEL),
    "vector" (generic LLVM vectors) or "portable" (plain loops). Returns the previous choice."""
    if name not in SIMD_MARKERS:
        raise ValueError(f"use_simd({name!r}): choose one of {', '.join(map(repr, SIMD_MARKERS))}")
    previous = next(n for n, marker in SIMD_MARKERS.items() if SIMD[0] is marker)
    SIMD[0] = SIMD_MARKERS[name]
    return previous


def kernel_path() -> str:
    """What the fast kernels run now, in words: 'avx2', 'avx512-vnni', 'neon-dotprod', 'vector', 'portable'."""
    name = next(n for n, marker in SIMD_MARKERS.items() if SIMD[0] is marker)
    return SIMD_LEVEL if name == "native" else name


def activation_buffers(rows: int, blocks: int):
    """xq int8 [>= rows, >= blocks, 32] and xds float32 [>= rows, >= blocks, 2], grown when too small."""
    xq, xds = ACTIVATIONS
    if xq.shape[0] < rows or xq.shape[1] < blocks:
        shape = (max(rows, xq.shape[0]), max(blocks, xq.shape[1]))
        ACTIVATIONS[:] = [np.zeros((*shape, QK), dtype=np.int8), np.zeros((*shape, 2), dtype=np.float32)]
    return ACTIVATIONS


# --- the contract ------------------------------------------------------------------------------

def kernel_arrays(weight: Weight) -> tuple:
    """The tuple of arrays the kernels read, in numba_quant_rows' order."""
    a = weight.arrays
    if weight.format in ("q8_0", "q4_0", "q4_1"):
        return (a["blocks"],)
    if weight.format == "int8":
        return a["codes"], a["scale"]
    if weight.format == "int4":
        return a["codes"], a["scale"], a["zero"]
    return a["codes"], a["absmax"], TABLES[weight.format]          # fp4, nf4


def linear_exact(x2, weight, bias, out):
    (gemv_exact if x2.shape[0] <= GEMV_MAX_ROWS else matmul_exact)(x2, kernel_arrays(weight), bias, out)


def linear_fast(x2, weight, bias, out):
    w = kernel_arrays(weight)
    xq, xds = activation_buffers(x2.shape[0], x2.shape[1] // QK)
    (gemv_fast if x2.shape[0] <= GEMV_MAX_ROWS else matmul_fast)(x2, w, bias, out, xq, xds, SIMD[0])


def linear_ggml_exact(x2, weight, bias, out):
    """The GGUF formats' exact linear with the least Python per call (a token makes ~200 of them)."""
    (gemv_exact if x2.shape[0] <= GEMV_MAX_ROWS else matmul_exact)(x2, (weight.arrays["blocks"],), bias, out)


def linear_ggml_fast(x2, weight, bias, out):
    xq, xds = ACTIVATIONS
    if xq.shape[0] < x2.shape[0] or xq.shape[1] * QK < x2.shape[1]:
        xq, xds = activation_buffers(x2.shape[0], x2.shape[1] // QK)
    (gemv_fast if x2.shape[0] <= GEMV_MAX_ROWS else matmul_fast)(x2, (weight.arrays["blocks"],), bias, out,
                                                                 xq, xds, SIMD[0])


def embedding(ids, weight, out):
    embedding_rows(ids, kernel_arrays(weight), out)


GGML = ("q8_0", "q4_0", "q4_1")
LINEAR = {**{(f, "exact"): linear_ggml_exact for f in GGML}, **{(f, "fast"): linear_ggml_fast for f in GGML},
          ("int8", "exact"): linear_exact, ("int8", "fast"): linear_fast,
          ("int4", "exact"): linear_exact, ("int4", "fast"): linear_fast,
          ("fp4", "exact"): linear_exact, ("nf4", "exact"): linear_exact}
EMBEDDING = {f: embedding for f in (*GGML, "int8", "int4", "fp4", "nf4")}


def prepare(weight: Weight) -> Weight:
    """Check once, at load, that the kernels can read `weight` as it is; contiguous copies only
    where an array is not (a GGUF memmap view is used as is)."""
    if (weight.format, weight.mode) not in LINEAR:
        raise UnsupportedFormatError(f"format {weight.format!r} has no {weight.mode!r} mode in the numba backend")
    if weight.mode == "fast" and weight.shape[1] % QK:
        raise UnsupportedFormatError(f"format {weight.format!r} in fast mode needs a row length that is a "
                                     f"multiple of {QK}; got shape {list(weight.shape)}")
    arrays = {}
    for name, a in weight.arrays.items():
        in_place = a.flags.c_contiguous or (weight.format == "int4" and name != "codes" and a.flags.f_contiguous)
        arrays[name] = a if in_place else np.ascontiguousarray(a)     # torchao's int4 scale/zero: transposed
    return weight.with_arrays(**arrays)


# --- benchmark ------------------------------------------------------------------------------------

def benchmark(gguf_path: str, rounds: int = 9, threads: int | None = None, llama_cpp: bool = True) -> dict:
    """Measure the kernels on a GGUF model (made for SmolLM2's Q4_1 file) against numba_linear's
    float32 and bf16 kernels on the same matrices, in one process with the configurations
    interleaved round by round. Each figure is the median over rounds, "<name> best" the fastest
    round (what the kernel does when the machine lets it); on a shared machine compare ratios
    within one run.

      gemv      per distinct matrix shape: billion weights per second, N = 1
      token     every 2-D weight in model order (each layer's q, k, v, o, gate, up, down, then
                the head), one N = 1 call each: the matrix work of one decoded token, in ms
      prefill   N = 512 on the first layer's gate and down and 4096 rows of the head, in ms
      llama.cpp its decode tokens/s on the same file (llama-cpp-python, same thread count), if installed
    """
    import numba
    import gguf

    from ..formats.ggml import from_gguf_tensor
    from .numba_linear import gemv as gemv_f32, matmul as matmul_f32, to_bf16

    if threads is not None:
        numba.set_num_threads(threads)
    tensors = {t.name: t for t in gguf.GGUFReader(gguf_path).tensors}
    layers = sorted({int(n.split(".")[1]) for n in tensors if n.startswith("blk.")})
    order = [f"blk.{i}.{p}.weight" for i in layers
             for p in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"      # tied embeddings: no output
    order = [n for n in order if n in tensors] + [head]
    exact = [prepare(from_gguf_tensor(tensors[n])) for n in order]
    fast = [w.with_mode("fast") for w in exact]
    f32 = [w.dequantize() for w in exact]
    no_bias, rng = np.zeros(0, dtype=np.float32), np.random.default_rng(0)
    xs = [rng.standard_normal((1, w.shape[1])).astype(np.float32) for w in exact]
    outs = [np.empty((1, w.shape[0]), dtype=np.float32) for w in exact]

    def timed(configs: dict, repeat: int = 1, per=lambda seconds: seconds * 1e3) -> dict:
        """{name: per(median seconds), name + " best": per(fastest round)}."""
        for run in configs.values():
            run()
        times = {name: [] for name in configs}
        for _ in range(rounds):
            for name, run in configs.items():
                start = time.perf_counter()
                for _ in range(repeat):
                    run()
                times[name].append((time.perf_counter() - start) / repeat)
        return {name: per(float(np.median(t))) for name, t in times.items()} | \
            {f"{name} best": per(float(min(t))) for name, t in times.items()}

    def load() -> str:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])

    result = {"threads": numba.get_num_threads(), "gemv": {}, "prefill": {}}
    shapes = {}
    for i, w in enumerate(exact):
        shapes.setdefault((w.format, w.shape), i)
    for (fmt, shape), i in shapes.items():
        w, bf, x, out = exact[i], to_bf16(f32[i]), xs[i], outs[i]
        t = timed({"float32": lambda: gemv_f32(x, f32[i], no_bias, out),
                   "bfloat16": lambda: gemv_f32(x, bf, no_bias, out),
                   "exact": lambda: LINEAR[(fmt, "exact")](x, w, no_bias, out),
                   "fast": lambda: LINEAR[(fmt, "fast")](x, fast[i], no_bias, out)},
                  repeat=max(1, 20_000_000 // w.nbytes), per=lambda seconds: shape[0] * shape[1] / seconds / 1e9)
        result["gemv"][f"{fmt} {list(shape)}"] = t | {"load": load()}

    def token(weights, mode):
        for w, x, out in zip(weights, xs, outs):
            LINEAR[(w.format, mode)](x, w, no_bias, out)

    def token_f32():
        for w, x, out in zip(f32, xs, outs):
            gemv_f32(x, w, no_bias, out)
    t = timed({"fast": lambda: token(fast, "fast"), "exact": lambda: token(exact, "exact"), "float32": token_f32})
    result["token"] = t | {"calls": len(order), "load": load()}

    for name in (order[4], order[6], order[-1]):
        i = order.index(name)
        w, wf, wd = exact[i], fast[i], f32[i]
        if w.shape[0] > 4096:                              # the head: 4096 of its rows
            w, wd = Weight(w.format, (4096, w.shape[1]), {"blocks": w.blocks[:4096]}), wd[:4096]
            wf = w.with_mode("fast")
        x = rng.standard_normal((512, w.shape[1])).astype(np.float32)
        out = np.empty((512, w.shape[0]), dtype=np.float32)
        t = timed({"float32": lambda: matmul_f32(x, wd, no_bias, out),
                   "exact": lambda: LINEAR[(w.format, "exact")](x, w, no_bias, out),
                   "fast": lambda: LINEAR[(w.format, "fast")](x, wf, no_bias, out)})
        result["prefill"][f"{name} {w.format} {list(w.shape)}"] = t | {"load": load()}

    if llama_cpp:
        result["llama.cpp"] = llama_cpp_decode(gguf_path, result["threads"], rounds) | {"load": load()}
    return result


def llama_cpp_decode(gguf_path: str, threads: int, rounds: int, tokens: int = 64) -> dict:
    """llama.cpp's decode speed on the same file through llama-cpp-python (tokens/s), or why not."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        return {"skipped": f"llama-cpp-python is not installed ({e})"}
    llm = Llama(model_path=gguf_path, n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
    prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog.")
    speeds = []
    for _ in range(rounds):
        llm.reset()
        llm.eval(prompt)
        start = time.perf_counter()
        for i in range(tokens):
            llm.eval([prompt[i % len(prompt)]])
        speeds.append(tokens / (time.perf_counter() - start))
    return {"tokens_per_s": float(np.median(speeds)), "best": float(max(speeds))}
