"""What one benchmark child measures, for one backend (runs in its own process).

    load (cold)     the weight files' pages dropped from the page cache first (posix_fadvise), then load
    load (warm)     the same load again: the files now in the page cache (a memory map costs nothing here)
    prefill tok/s   one forward over a 16-token and over a `prefill_tokens` prompt, last logits only
    decode tok/s    greedy generation of 1 + new_tokens, a clock on every token; new_tokens over the time
                    from the first to the last token (prefill and first token excluded); median of runs
    roofline        the same weight arrays read once by all Numba threads, right after each decode run:
                    decode GB/s over that read's GB/s (the machine's bandwidth drifts between seconds)
    memory          peak resident (VmHWM, reset after loading) and private memory (RssAnon, sampled at
                    every token of one more run) while generating; KV cache bytes per token
"""
from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .engines import make_engine, parse_spec, weight_files


@dataclass
class Settings:
    prompt_tokens: int = 32
    new_tokens: int = 64
    prefill_tokens: int = 512
    repeats: int = 5


def prompt_ids(length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """The benchmark prompt: [1, length] token ids, identical for every backend."""
    return np.random.default_rng(seed).integers(100, vocab_size - 1, size=(1, length), dtype=np.int64)


def proc_status_bytes(key: str) -> int | None:
    """A memory line of /proc/self/status in bytes (Linux): VmHWM (peak resident), RssAnon (private),
    RssFile (resident pages of mapped files: libraries, a memory-mapped checkpoint)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def drop_page_cache(paths) -> bool:
    """Ask the kernel to forget the files' cached pages (no root needed), so the next read is from disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


_CHUNK_WORDS = 1 << 18          # 1 MiB of uint32 words per parallel work item


def _stream_kernel():
    """A Numba kernel that reads every word of a list of arrays once, all threads, one launch."""
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def read_chunks(words, chunk_array, chunk_start, chunk_stop):
        total = np.uint32(0)
        for c in prange(chunk_array.size):
            a = words[chunk_array[c]][chunk_start[c]:chunk_stop[c]]
            s = np.uint32(0)
            for i in range(a.size):            # integer sum: vectorised, no float special cases
                s += a[i]
            total += s
        return total
    return read_chunks


def in_memory_order(a: np.ndarray) -> np.ndarray:
    """The same bytes as a C-contiguous array: a transposed view (torchao's int4 scales) read as
    stored, not copied (a copy of a 35B model's scales is 1 GB of private memory)."""
    return a.T if a.flags.f_contiguous and not a.flags.c_contiguous else np.ascontiguousarray(a)


class WeightReader:
    """Times reading the given arrays once (their bytes, in their own pages): the decode roofline."""

    def __init__(self, arrays):
        from numba.typed import List
        flat = [in_memory_order(a).reshape(-1).view(np.uint8) for a in arrays if a.nbytes >= 4]
        self.words = List([f[:f.size // 4 * 4].view(np.uint32) for f in flat])
        chunks = [(i, start, min(start + _CHUNK_WORDS, w.size))
                  for i, w in enumerate(self.words) for start in range(0, w.size, _CHUNK_WORDS)]
        self.chunk_array, self.chunk_start, self.chunk_stop = (np.array(c, dtype=np.int64) for c in zip(*chunks))
        self.nbytes = sum(w.nbytes for w in self.words)
        self.kernel = _stream_kernel()
        self.read()

    def read(self) -> float:
        t = time.perf_counter()
        self.kernel(self.words, self.chunk_array, self.chunk_start, self.chunk_stop)
        return time.perf_counter() - t

    def bandwidth(self, repeats: int) -> float:
        return self.nbytes / min(self.read() for _ in range(repeats)) / 1e9


def progress(spec: str, message: str) -> None:
    print(f"  {spec}: {message}", file=sys.stderr, flush=True)


def timed_load(spec, model_dir, gguf, llama_batch=None):
    t = time.perf_counter()
    engine = make_engine(spec, model_dir, gguf, llama_batch)
    return engine, time.perf_counter() - t


def measure(name: str, model_dir: str, gguf: str | None, settings: Settings, logits_path: str | None = None,
            llama_batch: int | None = None) -> dict:
    """Load one backend (cold, then warm), time prefill and decode, report memory."""
    spec = parse_spec(name)
    files = weight_files(spec, model_dir, gguf)
    cold = drop_page_cache(files)
    engine, load_cold = timed_load(spec, model_dir, gguf, llama_batch)
    progress(name, f"loaded ({'cold' if cold else 'page cache not dropped'}) in {load_cold:.1f} s")
    del engine
    gc.collect()
    engine, load_warm = timed_load(spec, model_dir, gguf, llama_batch)
    s = settings
    ids = prompt_ids(s.prompt_tokens, engine.vocab_size)
    engine.generate(ids, 2)                                        # warm-up (JIT cache load, allocations)
    reader = WeightReader(engine.weight_arrays)                    # the roofline: read these same bytes
    reset = reset_peak_rss()
    prefill = {}
    for length in sorted({16, s.prefill_tokens}):
        long_ids = prompt_ids(length, engine.vocab_size, seed=1)
        engine.prefill(long_ids[:, :8])                            # warm-up of the prefill path
        runs = []
        for _ in range(max(1, s.repeats // 2)):                 # --repeats 1: one run of each
            t = time.perf_counter()
            engine.prefill(long_ids)
            runs.append(time.perf_counter() - t)
        prefill[length] = length / statistics.median(runs)
        progress(name, f"prefill {length} tokens: {prefill[length]:.1f} tok/s")
    first, per_token, read_gb_s, tokens = [], [], [], None
    for r in range(s.repeats):
        start = time.perf_counter()
        tokens, times = engine.generate(ids, 1 + s.new_tokens)
        first.append(times[0])
        per_token.append((times[-1] - times[0]) / s.new_tokens)
        read_gb_s.append(reader.bandwidth(5))                      # right after: the machine drifts
        progress(name, f"decode run {r + 1}/{s.repeats}: {s.new_tokens} tokens at {1 / per_token[-1]:.1f} tok/s "
                       f"({time.perf_counter() - start:.1f} s)")
    pct_runs = [100 * engine.weight_bytes / t / 1e9 / bw for t, bw in zip(per_token, read_gb_s)]
    generate_peak = proc_status_bytes("VmHWM") if reset else None
    private = []
    engine.generate(ids, 1 + s.new_tokens, on_token=lambda: private.append(proc_status_bytes("RssAnon") or 0))
    if logits_path:
        logits = engine.logits(ids)
        if logits is not None:
            np.save(logits_path, np.asarray(logits, dtype=np.float32)[0])
    return {
        "backend": name, "description": engine.description, "weight_bytes": engine.weight_bytes,
        "load_cold_s": load_cold if cold else None, "load_warm_s": load_warm,
        "prefill_tok_s": {str(k): v for k, v in prefill.items()},
        "decode_tok_s": 1.0 / statistics.median(per_token), "decode_tok_s_runs": [1.0 / p for p in per_token],
        "first_token_s": statistics.median(first),
        "weight_read_gb_s_runs": read_gb_s, "pct_roofline_runs": pct_runs,
        "pct_roofline": statistics.median(pct_runs),
        "generate_peak_rss": generate_peak, "generate_peak_private": max(private, default=0) or None,
        "resident_file_bytes": proc_status_bytes("RssFile"),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "kv_bytes_per_token": engine.kv_bytes_per_token, "tokens": tokens, "settings": asdict(s),
    }
