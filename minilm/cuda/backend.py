"""backend="cuda" and backend="cuda-emulated": every op is a kernel from kernels/*.cu.

    "cuda"           kernels compiled by NVRTC and launched through cupy.RawModule;
                     arrays are cupy arrays on the GPU.
    "cuda-emulated"  the same kernel source and the same launch calls, run on
                     the CPU by the harness (emulator.py); arrays are numpy.
                     For learning and debugging without a GPU: kernel printf
                     works, and bugs (races, divergent barriers, bad
                     arguments, device asserts) raise Python exceptions.

Activations are float32; weights (formats.Weight) may be stored as float32,
float16 or bfloat16 and are always accumulated in float32. NumPy and CuPy have
no bfloat16 dtype, so bfloat16 arrays hold raw bits in uint16. The quantized
formats (q8_0, q4_0, q4_1, int8, int4, fp4, nf4) run as stored on the kernels
of quant.cu (exact mode) and quant_fast.cu (fast mode: int8 activations).

`CudaBackend` holds the launch machinery and one method per op;
`make_cuda_backend` builds the contract's namespace from its methods.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import UnsupportedFormatError
from ..formats import Weight
from ..formats.bnb import TABLES
from ..ops import sampling
from ..ops.contract import OPS, build_backend
from . import registry

DENSE_FORMATS = ("float32", "float16", "bfloat16")
GEMV_MAX_ROWS = 8          # up to this many tokens, linear() reads each weight row once per warp
QK = 32                    # quantized kernels: weights per block, activations quantized per block (fast mode)
ATTENTION_MAX_THREADS = 128  # attention.cu: keys per tile = threads; head_dim <= 4 * threads
SAMPLE_THREADS = 256       # sampling.cu: SAMPLE_THREADS


class NoGpuError(RuntimeError):
    pass


def gpu_available() -> bool:
    """True when CuPy can see a CUDA device (the real-GPU tests run only then)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


def _storage_name(array) -> str:
    names = {"float32": "float32", "float16": "float16", "uint16": "bfloat16"}
    if array.dtype.name not in names:
        raise TypeError(f"the CUDA backend stores float32, float16 or bfloat16 (as uint16), got {array.dtype}")
    return names[array.dtype.name]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _threads(n: int, cap: int = 256) -> int:
    """Threads for a 1-D block working on n items: a multiple of 32, at most cap."""
    return min(cap, max(32, _cdiv(n, 32) * 32))


class CudaBackend:
    # Sampling filters work on the [B, V] scores generate already holds on the host.
    top_k_filter = staticmethod(sampling.top_k_filter)
    top_p_filter = staticmethod(sampling.top_p_filter)

    def __init__(self, emulated: bool, *, check_thread_order: bool = True, workers: int | None = None,
                 debug: bool = False):
        self.emulated = emulated
        self.name = "cuda-emulated" if emulated else "cuda"
        if emulated:
            from .emulator import EmulatedModule
            self.xp = np
            order = "both" if check_thread_order else "forward"
            self._new_module = lambda code, names: EmulatedModule(code, names, thread_order=order,
                                                                  workers=workers, debug=debug)
        else:
            cupy = _require_gpu()
            self.xp = cupy
            self._new_module = lambda code, names: cupy.RawModule(code=code, name_expressions=names)
        self._modules: dict = {}
        self._no_bias = self.asarray(np.zeros(1, dtype=np.float32))  # a valid pointer when bias is None
        self._tables: dict = {}                                       # fp4/nf4 code tables on the device

    # --- glue ----------------------------------------------------------------
    def asarray(self, array):
        return self._c(array)

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array) if self.emulated else self.xp.asnumpy(array)

    def threads(self, count=None):
        return 1                            # the GPU (or the harness's own workers) needs no tuning here

    def supports(self, format, mode):
        if format in DENSE_FORMATS:
            return True                      # dense weights have no activation quantization: either mode
        return format in registry.QUANT_FORMATS and (mode == "exact" or format in registry.FAST_QUANT_FORMATS)

    def prepare_weight(self, weight: Weight) -> Weight:
        """A host Weight -> the same Weight with every array on the device (emulated: host, contiguous)."""
        if not self.supports(weight.format, weight.mode):
            in_mode = f" in {weight.mode} mode" if self.supports(weight.format, "exact") else ""
            raise UnsupportedFormatError(f"backend {self.name!r} does not run weight format {weight.format!r}{in_mode}")
        if weight.format in registry.QUANT_FORMATS and weight.mode == "fast" and weight.shape[1] % QK:
            raise UnsupportedFormatError(f"backend {self.name!r}: format {weight.format!r} in fast mode quantizes "
                                         f"activations in blocks of {QK}; got a row length of {weight.shape[1]}")
        return weight.with_arrays(**{name: self.asarray(a) for name, a in weight.arrays.items()})

    def compile_all(self) -> None:
        """Build every kernel module now (in parallel) instead of on first use."""
        with ThreadPoolExecutor() as pool:
            list(pool.map(self._module, registry.MODULES))

    # --- the op contract -------------------------------------------------------
    def rms_norm(self, x, weight, eps: float):
        x, weight = self._c(x), self._c(weight)
        dim = x.shape[-1]
        out = self._empty(x.shape, x.dtype)
        self._launch("rms_norm", "rms_norm", (x, weight), x.size // dim, _threads(dim),
                     (x, weight, out, np.int32(dim), np.float32(eps)))
        return out

    def layer_norm(self, x, weight, eps: float):
        x, weight = self._c(x), self._c(weight)
        if tuple(x.shape[x.ndim - weight.ndim:]) != tuple(weight.shape):
            raise ValueError(f"layer_norm weight {weight.shape} does not broadcast over the last axes of x {x.shape}")
        dim = x.shape[-1]
        out = self._empty(x.shape, x.dtype)
        self._launch("layer_norm", "layer_norm", (x, weight), x.size // dim, _threads(dim),
                     (x, weight, out, np.int32(dim), np.int32(weight.size // dim), np.float32(eps)))
        return out

    def apply_rope(self, x, cos, sin, interleaved: bool):
        x = self._c(x)
        B, T, H, HD = x.shape
        cos, sin = (self._broadcast(a, (B, T, HD // 2), np.float32) for a in (cos, sin))
        out = self._empty(x.shape, x.dtype)
        self._launch("rope", "rope", (x,), B * T, _threads(H * HD // 2),
                     (x, cos, sin, out, np.int32(H), np.int32(HD), np.int32(bool(interleaved))))
        return out

    def attention(self, q, k, v, mask, scale: float):
        q, k, v = self._c(q), self._c(k), self._c(v)
        B, T, H, HD = q.shape
        S, KV = k.shape[1], k.shape[2]
        self._check_cache_dtype(q, k)
        if H % KV or HD > 4 * ATTENTION_MAX_THREADS or k.shape != v.shape:
            raise ValueError(f"attention: unsupported shapes q {q.shape}, k {k.shape}, v {v.shape}")
        mask = self._broadcast(mask, (B, T, S), bool)
        out = self._empty(q.shape, q.dtype)
        # One key per thread per tile: short contexts need fewer threads; each thread owns <= 4 head dims.
        threads = max(_threads(S, cap=ATTENTION_MAX_THREADS), _cdiv(HD, 4 * 32) * 32)
        self._launch("attention", "attention", (q,), (H, T, B), threads,
                     (q, k, v, mask, out, np.int32(T), np.int32(S), np.int32(H), np.int32(KV), np.int32(HD),
                      np.float32(scale)),
                     shared_mem=(HD + threads) * 4)
        return out

    def attention_probs(self, q, k, mask, scale: float):
        q, k = self._c(q), self._c(k)
        B, T, H, HD = q.shape
        S, KV = k.shape[1], k.shape[2]
        self._check_cache_dtype(q, k)
        if H % KV:
            raise ValueError(f"attention_probs: {H} query heads do not split over {KV} kv heads")
        mask = self._broadcast(mask, (B, T, S), bool)
        out = self._empty((B, H, T, S), np.float32)                 # float32 whatever q's storage
        # One warp per key for the scores, then every thread walks its strided keys.
        threads = _threads(32 * min(S, 4), cap=ATTENTION_MAX_THREADS)
        self._launch("attention", "attention_probs", (q,), (H, T, B), threads,
                     (q, k, mask, out, np.int32(T), np.int32(S), np.int32(H), np.int32(KV), np.int32(HD),
                      np.float32(scale)),
                     shared_mem=HD * 4)
        return out

    def swiglu(self, gate, up):
        gate, up = self._c(gate), self._c(up)
        out = self._empty(gate.shape, gate.dtype)
        n = gate.size
        self._launch("swiglu", "swiglu", (gate,), min(_cdiv(n, 256), 1024), 256, (gate, up, out, np.int64(n)))
        return out

    def linear(self, x, weight, bias=None):
        if weight.format in registry.QUANT_FORMATS:
            return self._quant_linear(x, weight, bias)
        x, weight = self._c(x), weight.data
        in_features, out_features = x.shape[-1], weight.shape[0]
        rows = x.size // in_features
        has_bias = bias is not None
        if has_bias and bias.dtype == np.uint16:
            raise TypeError("linear: pass the bias as float32 (the kernels read it as float32)")
        bias = self._c(bias, np.float32) if has_bias else self._no_bias
        out = self._empty(x.shape[:-1] + (out_features,), x.dtype)
        args = (x, weight, bias, out, np.int32(rows), np.int32(in_features), np.int32(out_features),
                np.int32(has_bias))
        if rows <= GEMV_MAX_ROWS:
            self._launch("matmul", "linear_gemv", (x, weight), _cdiv(out_features, 4), 128, args)
        else:
            self._launch("matmul", "linear_tiled", (x, weight), (_cdiv(out_features, 32), _cdiv(rows, 32)), (32, 8),
                         args)
        return out

    def embedding(self, ids, table):
        if table.format in registry.QUANT_FORMATS:
            return self._quant_embedding(ids, table)
        ids, table = self._c(ids, np.int64), table.data
        vocab, dim = table.shape
        out = self._empty(ids.shape + (dim,), np.float32)
        self._launch("embedding", "embedding", (table,), ids.size, _threads(dim),
                     (ids, table, out, np.int32(vocab), np.int32(dim)))
        return out

    def scale_logits(self, logits, scale: float):
        logits = self._c(logits)
        out = self._empty(logits.shape, logits.dtype)
        n = logits.size
        self._launch("logit_scale", "scale_logits", (logits,), min(_cdiv(n, 256), 1024), 256,
                     (logits, out, np.int64(n), np.float32(scale)))
        return out

    def argmax(self, scores):
        """scores [..., V] -> [...] int64, the first index on ties."""
        scores = self._c(scores)
        vocab = scores.shape[-1]
        out = self._empty(scores.shape[:-1], np.int64)
        self._launch("sampling", "argmax", (scores,), scores.size // vocab, _threads(vocab),
                     (scores, out, np.int32(vocab)))
        return out

    def sample(self, scores, rng: np.random.Generator):
        """Draw one token per row from softmax(scores [B, V]) by inverse CDF (like ops.sampling.sample)."""
        scores = self._c(scores)
        vocab = scores.shape[-1]
        rows = scores.size // vocab
        uniforms = self.asarray(rng.random(rows).astype(np.float32))
        out = self._empty(scores.shape[:-1], np.int64)
        self._launch("sampling", "sample", (scores,), rows, SAMPLE_THREADS, (scores, uniforms, out, np.int32(vocab)))
        return out

    # --- quantized weights (kernels/quant.cu, quant_fast.cu) ---------------------
    def _quant_linear(self, x, weight: Weight, bias):
        x = self._c(x)
        if x.dtype != np.float32:
            raise TypeError(f"linear: quantized weights take float32 activations, got {x.dtype}")
        out_features, in_features = weight.shape
        if x.shape[-1] != in_features:
            raise ValueError(f"linear: x {tuple(x.shape)} does not match a weight of shape {list(weight.shape)}")
        rows = x.size // in_features
        has_bias = bias is not None
        bias = self._c(bias, np.float32) if has_bias else self._no_bias
        out = self._empty(x.shape[:-1] + (out_features,), np.float32)
        tail = (*self._quant_arrays(weight), bias, out, np.int32(rows), np.int32(in_features),
                np.int32(out_features), np.int32(has_bias))
        module, suffix, inputs = "quant", "", (x,)
        if weight.mode == "fast":
            module, suffix, inputs = "quant_fast", "_fast", self._quantize_activations(x, rows * in_features // QK)
        if rows <= GEMV_MAX_ROWS:    # one warp per output row, 4 rows per block of threads
            self._launch_quant(module, registry.quant_name("quant_gemv" + suffix, weight.format),
                               _cdiv(out_features, 4), 128, (*inputs, *tail))
        else:                        # 32x32 tiles of out
            self._launch_quant(module, registry.quant_name("quant_tiled" + suffix, weight.format),
                               (_cdiv(out_features, 32), _cdiv(rows, 32)), (32, 8), (*inputs, *tail))
        return out

    def _quantize_activations(self, x, blocks: int):
        """float32 x -> (int8 codes like x, fp16-rounded scales and scaled sums [blocks]): fast mode's input."""
        xq = self._empty(x.shape, np.int8)
        xd, xs = self._empty((blocks,), np.float32), self._empty((blocks,), np.float32)
        self._launch_quant("quant_fast", "quantize_activations", _cdiv(blocks, 4), 128,
                           (x, xq, xd, xs, np.int32(blocks)))
        return xq, xd, xs

    def _quant_embedding(self, ids, table: Weight):
        ids = self._c(ids, np.int64)
        vocab, dim = table.shape
        out = self._empty(ids.shape + (dim,), np.float32)
        self._launch_quant("quant", registry.quant_name("quant_embedding", table.format), ids.size, _threads(dim),
                           (ids, *self._quant_arrays(table), out, np.int32(vocab), np.int32(dim)))
        return out

    def _quant_arrays(self, weight: Weight) -> tuple:
        """The kernels' (codes, scales, extra, group_blocks) for a Weight (see kernels/quant.cuh)."""
        a, unused = weight.arrays, self._no_bias
        if weight.format in ("q8_0", "q4_0", "q4_1"):
            return a["blocks"], unused, unused, np.int32(0)
        if weight.format == "int8":
            return a["codes"], a["scale"], unused, np.int32(0)
        if weight.format == "int4":
            group_blocks = weight.shape[1] // QK // a["scale"].shape[1]
            return a["codes"], a["scale"], a["zero"], np.int32(group_blocks)
        if weight.format not in self._tables:                       # fp4, nf4: the 16-entry table
            self._tables[weight.format] = self.asarray(TABLES[weight.format])
        return a["codes"], a["absmax"], self._tables[weight.format], np.int32(0)

    def _launch_quant(self, module: str, name: str, grid, block, args):
        """Launch the kernel `name` of kernels/<module>.cu (nothing to do for empty inputs)."""
        if name not in registry.MODULES[module]:
            raise TypeError(f"the CUDA backend has no {name}")
        grid = grid if isinstance(grid, tuple) else (grid,)
        if 0 in grid:
            return
        block = block if isinstance(block, tuple) else (block,)
        self._module(module).get_function(name)(grid, block, args)

    # --- helpers ---------------------------------------------------------------
    def _check_cache_dtype(self, q, k):
        if k.dtype != q.dtype:
            raise UnsupportedFormatError(f"backend {self.name!r} attends over a KV cache stored like q ({q.dtype}); "
                                         f"cache_dtype='bfloat16' runs on the numpy and numba backends")

    def _c(self, array, dtype=None):
        """Any host (numpy) or backend array -> a C-contiguous backend array."""
        # cupy.ascontiguousarray refuses numpy input: asarray moves it to the device first.
        return self.xp.ascontiguousarray(self.xp.asarray(array), dtype=dtype)

    def _broadcast(self, array, shape, dtype):
        return self._c(self.xp.broadcast_to(self.xp.asarray(array), shape), dtype)

    def _empty(self, shape, dtype):
        if not self.emulated:
            return self.xp.empty(shape, dtype=dtype)
        # Poisoned (NaN for floats, -1 for ints): an element a kernel forgets to write shows up.
        count = int(np.prod(shape, dtype=np.int64))
        return np.full(count * np.dtype(dtype).itemsize, 0xFF, dtype=np.uint8).view(dtype).reshape(shape)

    def _module(self, module: str):
        if module not in self._modules:
            self._modules[module] = self._new_module(registry.module_source(module), registry.MODULES[module])
        return self._modules[module]

    def _launch(self, module: str, function: str, typed_args: tuple, grid, block, args, shared_mem: int = 0):
        """Launch function<types of typed_args> from kernels/<module>.cu (nothing to do for empty inputs)."""
        name = registry.name_expression(function, *(_storage_name(a) for a in typed_args))
        if name not in registry.MODULES[module]:
            supported = ", ".join(n for n in registry.MODULES[module] if n.startswith(function + "<"))
            raise TypeError(f"the CUDA backend has no {name}; it has {supported}")
        grid = grid if isinstance(grid, tuple) else (grid,)
        if 0 in grid:
            return
        block = block if isinstance(block, tuple) else (block,)
        self._module(module).get_function(name)(grid, block, args, shared_mem=shared_mem)


def _require_gpu():
    if not gpu_available():
        raise NoGpuError("backend='cuda': no GPU found (CuPy sees no CUDA device); "
                         "use backend='cuda-emulated' to run the same CUDA kernels on the CPU")
    import cupy
    return cupy


def make_cuda_backend(emulated: bool, **options):
    """backend="cuda" (emulated=False, needs a GPU) or "cuda-emulated" (the CPU harness).

    options: check_thread_order (emulated: run every launch forward and reverse
    and compare, default True), workers (emulated: OS threads), debug
    (emulated: build with -O0 -g and run on the calling thread, for gdb).
    """
    kernels = CudaBackend(emulated, **options)
    return build_backend(kernels.name, {op: getattr(kernels, op) for op in OPS})
