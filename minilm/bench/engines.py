"""The engines a benchmark child can run, behind one small interface.

    spec = parse_spec("numba-q4_1")            # which engine, backend, weight format and mode
    engine = make_engine(spec, model_dir, gguf_path)
    tokens, times = engine.generate(ids, n)    # greedy; the time each token became available
    engine.prefill(ids)                        # one forward over the prompt, last logits only
    engine.weight_arrays                       # the bytes a decode step reads (the roofline)

Backend names (`minilm bench --backends ...`):
    numpy, numba                    minilm on the float32 checkpoint
    numba-bf16                      bfloat16 storage
    numba-<format>[-exact]          the checkpoint quantized at load (q8_0, q4_0, q4_1, int8, int4, fp4, nf4);
                                    fast mode where a kernel exists, unless -exact
    numba-gguf[-exact]              the GGUF file as stored (fast mode unless -exact)
    transformers, transformers-bf16 transformers in the checkpoint's dtype (or bf16), eager attention
    llama.cpp                       llama-cpp-python on the GGUF file (optional: pip install llama-cpp-python)
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass

import numpy as np

QUANTIZED = ("q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4")


class Unavailable(Exception):
    """A backend this machine cannot run (a missing optional package, no GGUF file): the reason."""


@dataclass(frozen=True)
class Spec:
    name: str
    engine: str                      # "minilm" | "transformers" | "llama.cpp"
    backend: str = "numba"
    source: str = "checkpoint"       # "checkpoint" or "gguf"
    weight_dtype: str = "float32"
    quantize: str | None = None
    mode: str = "auto"               # "auto": fast where a kernel exists


def parse_spec(name: str) -> Spec:
    if name in ("numpy", "numba"):
        return Spec(name, "minilm", backend=name)
    if name == "numba-bf16":
        return Spec(name, "minilm", weight_dtype="bfloat16")
    if name in ("transformers", "transformers-bf16"):
        return Spec(name, "transformers", weight_dtype="bfloat16" if name.endswith("bf16") else "auto")
    if name == "llama.cpp":
        return Spec(name, "llama.cpp", source="gguf")
    parts = name.split("-")
    exact = parts[-1] == "exact"
    core = parts[:-1] if exact else parts
    if len(core) == 2 and core[0] == "numba" and core[1] == "gguf":
        return Spec(name, "minilm", source="gguf", mode="exact" if exact else "auto")
    if len(core) == 2 and core[0] == "numba" and core[1] in QUANTIZED:
        return Spec(name, "minilm", quantize=core[1], mode="exact" if exact else "auto")
    raise ValueError(f"unknown benchmark backend {name!r} (see `minilm bench --help` for the names)")


def weight_files(spec: Spec, model_dir: str, gguf: str | None) -> list[str]:
    """The files a backend reads its weights from (for cold loads: their pages are dropped first)."""
    if spec.source == "gguf":
        if not gguf:
            raise Unavailable("no GGUF file (give one with --gguf)")
        return [gguf]
    from ..errors import WeightsError
    from ..weights import checkpoint_files
    try:
        return checkpoint_files(model_dir)
    except WeightsError as e:
        raise Unavailable(f"no safetensors checkpoint ({e}); a GGUF runs as numba-gguf and llama.cpp") from None


def unique_arrays(arrays) -> list:
    seen, out = set(), []
    for a in arrays:
        if a is not None and id(a) not in seen:
            seen.add(id(a))
            out.append(a)
    return out


def stored_format(model_dir: str) -> str:
    """The format the checkpoint stores its embedding in ("float32", "bfloat16", ...)."""
    from ..loading import STORED_FORMAT
    from ..weights import read_checkpoint
    tensors = read_checkpoint(model_dir)
    embedding = next((t for name, t in tensors.items() if name.endswith("embed_tokens.weight")), None)
    return STORED_FORMAT.get(embedding.dtype, "float32") if embedding else "float32"


class MinilmEngine:
    def __init__(self, spec: Spec, model_dir: str, gguf: str | None):
        import minilm
        from ..formats import Weight
        source = gguf if spec.source == "gguf" else model_dir
        weight_dtype = spec.weight_dtype
        if spec.quantize and stored_format(model_dir) == "bfloat16":
            weight_dtype = "bfloat16"            # the layers kept unquantized stay bf16, as torchao and bnb keep them
        self.model = minilm.load(source, backend=spec.backend, weight_dtype=weight_dtype,
                                 quantize=spec.quantize, mode=spec.mode, progress=False)
        weights = self.model.weights.values()
        self.weight_arrays = unique_arrays(a for w in weights for a in (w.arrays.values() if isinstance(w, Weight)
                                                                          else [w]))
        self.weight_bytes = sum(a.nbytes for a in self.weight_arrays)
        self.vocab_size = self.model.config.vocab_size
        self.kv_bytes_per_token = self.model.new_cache(1).bytes_per_token
        formats = sorted({f"{w.format}/{w.mode}" if w.format not in ("float32", "bfloat16") else w.format
                          for w in weights if isinstance(w, Weight)})
        self.description = ", ".join(formats)

    def generate(self, ids, n, on_token=None):
        from ..generate import generate_stream
        tokens, times, t0 = [], [], time.perf_counter()
        for next_ids in generate_stream(self.model, ids, max_new_tokens=n, eos_token_id=[]):
            times.append(time.perf_counter() - t0)
            tokens.append(int(next_ids[0]))
            if on_token:
                on_token()
        return tokens, times

    def prefill(self, ids):
        return self.model(ids, logits_to_keep=1).logits

    def logits(self, ids):
        return self.model(ids).logits


class TransformersEngine:
    def __init__(self, spec: Spec, model_dir: str, gguf: str | None):
        for module in ("torch", "transformers"):
            if importlib.util.find_spec(module) is None:
                raise Unavailable(f"{module} is not installed (pip install -e \".[parity]\")")
        import torch
        from transformers import AutoModelForCausalLM
        self.torch = torch
        torch.set_num_threads(engine_threads())
        dtype = torch.bfloat16 if spec.weight_dtype == "bfloat16" else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").eval()
        params = list(self.model.parameters())                       # a tied head is listed once
        self.weight_arrays = [p.detach().view(torch.int16).numpy() if p.dtype == torch.bfloat16
                              else p.detach().numpy() for p in params]
        self.weight_bytes = sum(a.nbytes for a in self.weight_arrays)
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * params[0].element_size()
        self.vocab_size = cfg.vocab_size
        self.description = f"{str(params[0].dtype).replace('torch.', '')}, {torch.get_num_threads()} threads"

    def generate(self, ids, n, on_token=None):
        times, t0 = [], time.perf_counter()

        class Clock:  # generate() calls put() with the prompt first, then once per new token
            def put(self, value):
                times.append(time.perf_counter() - t0)
                if on_token:
                    on_token()

            def end(self):
                pass

        with self.torch.no_grad():
            out = self.model.generate(self.torch.as_tensor(ids), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, pad_token_id=0, streamer=Clock())
        return [int(t) for t in out[0, ids.shape[1]:]], times[1:]

    def prefill(self, ids):
        with self.torch.no_grad():
            return self.model(self.torch.as_tensor(ids), logits_to_keep=1).logits.float().numpy()

    def logits(self, ids):
        with self.torch.no_grad():
            return self.model(self.torch.as_tensor(ids)).logits.float().numpy()


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python, on the same GGUF file, with as many threads as minilm uses."""

    def __init__(self, spec: Spec, model_dir: str, gguf: str | None, n_ctx: int = 2048, n_batch: int = 512):
        if importlib.util.find_spec("llama_cpp") is None:
            raise Unavailable("llama-cpp-python is not installed (pip install llama-cpp-python; it compiles "
                              "llama.cpp, a few minutes)")
        if not gguf:
            raise Unavailable("no GGUF file (give one with --gguf)")
        import llama_cpp
        from ..gguf_file import open_gguf
        threads = engine_threads()
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        file = open_gguf(gguf)
        self.weight_arrays = [file.data(name) for name in file.tensors]
        self.weight_bytes = sum(a.nbytes for a in self.weight_arrays)
        self.vocab_size = self.llm.n_vocab()
        meta = file.metadata
        arch = meta["general.architecture"]
        layers, kv_heads = meta[f"{arch}.block_count"], meta.get(f"{arch}.attention.head_count_kv")
        head_dim = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // \
            meta[f"{arch}.attention.head_count"]
        self.kv_bytes_per_token = 2 * layers * (kv_heads or meta[f"{arch}.attention.head_count"]) * head_dim * 2
        self.description = f"llama.cpp {llama_cpp.__version__}, {threads} threads, f16 KV cache" + \
            ("" if n_batch > 1 else ", one token per batch")

    def generate(self, ids, n, on_token=None):
        self.llm.reset()
        tokens, times, t0 = [], [], time.perf_counter()
        for token in self.llm.generate(ids[0].tolist(), top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            times.append(time.perf_counter() - t0)
            tokens.append(int(token))
            if on_token:
                on_token()
            if len(tokens) == n:
                break
        return tokens, times

    def prefill(self, ids):
        self.llm.reset()
        self.llm.eval(ids[0].tolist())
        return None

    def logits(self, ids):
        return None


ENGINES = {"minilm": MinilmEngine, "transformers": TransformersEngine, "llama.cpp": LlamaCppEngine}


def engine_threads() -> int:
    """The thread count every engine of a child uses: Numba's (`minilm bench --threads` sets it)."""
    import numba
    return numba.config.NUMBA_NUM_THREADS


def make_engine(spec: Spec, model_dir: str, gguf: str | None, llama_batch: int | None = None):
    if llama_batch and spec.engine == "llama.cpp":
        return LlamaCppEngine(spec, model_dir, gguf, n_batch=llama_batch)
    return ENGINES[spec.engine](spec, model_dir, gguf)
