"""`minilm bench`: decode and prefill speed of every backend against transformers, in one run.

    minilm bench                                  # SmolLM2-135M-Instruct, all backends
    minilm bench --backends numba,transformers --new-tokens 128 --json out.json

Each backend runs in its own child process (`python -m minilm.bench worker ...`),
one after the other, so that peak memory is its own and thread pools of Numba,
OpenBLAS and PyTorch never compete. Every child gets the same prompt (token ids
drawn with a fixed seed) and generates the same number of greedy tokens.

Measured per backend:
  decode tok/s     generate(1 + new_tokens) with a clock on every token (a transformers streamer,
                   minilm's generate_stream): new_tokens / (last token time - first token time),
                   i.e. prefill and the first token excluded; median of --repeats runs
  prefill tok/s    prefill_tokens / time of one forward over prefill_tokens tokens (all logits)
  GB/s, % bw       weight bytes read per decoded token / time per token, and that as a
                   fraction of the fastest of 5 plain reads of the same weight arrays (all Numba
                   threads, one launch) timed right after each decode run; median over the runs
  peak RSS         while generating (VmHWM reset after loading), and over the whole child;
                   private memory (RssAnon) sampled at every token of one more run
  startup          a fresh process with a warm on-disk Numba cache: import, load, first token
Speed is never asserted by the test suite; this command is how it is measured.
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .formats import Weight, quantize

DEFAULT_BACKENDS = ("numpy", "numba", "numba-bf16", "transformers")
SPECS = {  # name -> (engine, weight dtype)
    "numpy": ("minilm-numpy", "float32"),
    "numba": ("minilm-numba", "float32"),
    "numba-bf16": ("minilm-numba", "bfloat16"),
    "transformers": ("transformers", "float32"),
}


# --- what a child process measures ------------------------------------------

def prompt_ids(length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """The benchmark prompt: [1, length] token ids, identical for every backend."""
    return np.random.default_rng(seed).integers(100, vocab_size - 1, size=(1, length), dtype=np.int64)


def _proc_status_bytes(key: str) -> int | None:
    """A memory line of /proc/self/status in bytes (Linux): VmHWM (peak resident), RssAnon (private
    memory), RssFile (resident pages of mapped files: shared libraries, a memory-mapped checkpoint)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def weight_arrays(weights) -> list:
    """Every array behind the model's weights once (a tied head shares the embedding's arrays)."""
    seen, out = set(), []
    for w in weights:
        for a in (w.arrays.values() if isinstance(w, Weight) else [w]):
            if a is not None and id(a) not in seen:
                seen.add(id(a))
                out.append(a)
    return out


class _Minilm:
    def __init__(self, model_dir, backend, weight_dtype):
        import minilm
        self.model = minilm.load(model_dir, backend=backend, weight_dtype=weight_dtype, progress=False)
        self.vocab_size = self.model.config.vocab_size
        # Bytes a decode step reads: every weight once (a tied embedding is the LM head, read once).
        self.weight_arrays = weight_arrays(self.model.weights.values())
        self.weight_bytes = sum(a.nbytes for a in self.weight_arrays)

    def generate(self, ids, n, on_token=None):
        """-> (n greedy tokens, the time each became available since the call); on_token() after each."""
        from .generate import generate_stream
        tokens, times, t0 = [], [], time.perf_counter()
        for next_ids in generate_stream(self.model, ids, max_new_tokens=n, eos_token_id=[]):
            times.append(time.perf_counter() - t0)
            tokens.append(int(next_ids[0]))
            if on_token:
                on_token()
        return tokens, times

    def forward(self, ids):
        return self.model(ids).logits


class _Transformers:
    def __init__(self, model_dir, backend, weight_dtype):
        import torch
        from transformers import AutoModelForCausalLM
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
        self.vocab_size = self.model.config.vocab_size
        self.weight_arrays = [p.detach().numpy() for p in self.model.parameters()]  # tied: listed once
        self.weight_bytes = sum(a.nbytes for a in self.weight_arrays)

    def generate(self, ids, n, on_token=None):
        """-> (n greedy tokens, the time each became available since the call), via a streamer."""
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

    def forward(self, ids):
        with self.torch.no_grad():
            return self.model(self.torch.as_tensor(ids)).logits.numpy()


def measure(spec: str, model_dir: str, prompt_tokens: int, new_tokens: int, prefill_tokens: int,
            repeats: int, logits_path: str | None = None) -> dict:
    """Run in a child process: load one backend, time decode and prefill, report memory."""
    engine, weight_dtype = SPECS[spec]
    t0 = time.perf_counter()
    runner = (_Transformers if engine == "transformers" else _Minilm)(
        model_dir, engine.removeprefix("minilm-"), weight_dtype)
    load_s = time.perf_counter() - t0
    ids = prompt_ids(prompt_tokens, runner.vocab_size)
    runner.generate(ids, 2)                                       # warm-up (JIT cache load, allocations)
    reader = WeightReader(runner.weight_arrays)                   # the roofline: read these same bytes
    reset = _reset_peak_rss()
    first, per_token, weight_bandwidth, tokens = [], [], [], None
    for _ in range(repeats):
        tokens, times = runner.generate(ids, 1 + new_tokens)
        first.append(times[0])                                    # prefill of the prompt + first token
        per_token.append((times[-1] - times[0]) / new_tokens)     # then new_tokens decode steps
        weight_bandwidth.append(reader.bandwidth(5))              # right after: the machine drifts
    # Each run against the reads taken right after it, so a quiet moment for the reads is not
    # compared with a busy one for the decode (or the reverse).
    pct_runs = [100 * runner.weight_bytes / t / 1e9 / bw for t, bw in zip(per_token, weight_bandwidth)]
    generate_peak = _proc_status_bytes("VmHWM") if reset else None
    # One more (untimed) run sampling private memory at every token: resident memory also counts
    # the pages of mapped files (shared libraries such as LLVM, a memory-mapped checkpoint).
    private = []
    runner.generate(ids, 1 + new_tokens, on_token=lambda: private.append(_proc_status_bytes("RssAnon") or 0))
    generate_peak_private, shared_code = max(private, default=0) or None, _proc_status_bytes("RssFile")
    long_ids = prompt_ids(prefill_tokens, runner.vocab_size, seed=1)
    runner.forward(long_ids[:, :16])                              # warm-up of the prefill path
    prefill = []
    for _ in range(max(2, repeats // 2)):
        t = time.perf_counter()
        runner.forward(long_ids)
        prefill.append(time.perf_counter() - t)
    if logits_path:                                               # for the cross-backend logit check
        np.save(logits_path, np.asarray(runner.forward(ids), dtype=np.float32)[0])
    return {
        "backend": spec, "weight_dtype": weight_dtype, "load_s": load_s,
        "weight_bytes": runner.weight_bytes, "weight_read_gb_s": statistics.median(weight_bandwidth),
        "weight_read_gb_s_runs": weight_bandwidth, "pct_bandwidth_runs": pct_runs,
        "decode_tok_s": 1.0 / statistics.median(per_token),
        "decode_tok_s_best": 1.0 / min(per_token),
        "decode_tok_s_runs": [1.0 / p for p in per_token],
        "prefill_tok_s": prefill_tokens / statistics.median(prefill),
        "first_token_s": statistics.median(first),
        "generate_peak_rss": generate_peak,
        "generate_peak_private": generate_peak_private, "resident_file_bytes": shared_code,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "tokens": tokens,
    }


def bf16_checkpoint_error(model_dir: str, prompt_tokens: int) -> float:
    """max |logits| difference of numba-bf16 against the numba float32 path when both hold the
    same weights: the checkpoint rounded to bf16, as a checkpoint saved in bf16 would be. This
    separates the kernels (bf16 widened in registers, float32 accumulation) from the rounding of
    a float32 checkpoint's weights, which bf16 storage cannot avoid."""
    import minilm
    fast = minilm.load(model_dir, backend="numba", weight_dtype="bfloat16", progress=False)
    ids = prompt_ids(prompt_tokens, fast.config.vocab_size)
    bf16_logits = fast(ids).logits
    float32_path = minilm.load(model_dir, backend="numba", weight_dtype="float32", progress=False)
    widened = {}                                       # by id: a tied embedding stays one array
    for name, w in fast.weights.items():
        if isinstance(w, Weight) and w.format == "bfloat16":
            float32_path.weights[name] = widened.setdefault(id(w), quantize(w.dequantize(), "float32"))
    return float(np.abs(float32_path(ids).logits - bf16_logits).max())


# --- memory bandwidth ---------------------------------------------------------

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


class WeightReader:
    """Times reading the given arrays once (their bytes, in their own pages): the decode roofline."""

    def __init__(self, arrays):
        from numba.typed import List
        self.words = List([np.ascontiguousarray(a).reshape(-1).view(np.uint8)[:a.nbytes // 4 * 4].view(np.uint32)
                           for a in arrays])
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


def measure_bandwidth(gib: float = 1.0, repeats: int = 7) -> dict:
    """Streaming read of one large array by all Numba threads, GB/s (best of `repeats`)."""
    import numba
    reader = WeightReader([np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)])
    return {"bandwidth_gb_s": reader.bandwidth(repeats), "threads": numba.get_num_threads()}


# --- startup of a second process -------------------------------------------------

_STARTUP_SCRIPT = """
import time, sys
t0 = time.perf_counter()
import numpy as np, minilm
from minilm.bench import prompt_ids
model = minilm.load(sys.argv[1], backend="numba", weight_dtype=sys.argv[2], progress=False)
ids = prompt_ids(int(sys.argv[3]), model.config.vocab_size)
model.generate(ids, max_new_tokens=1, eos_token_id=[])
print("FIRST_TOKEN", time.perf_counter() - t0)
"""


def measure_startup(model_dir: str, weight_dtype: str, prompt_tokens: int) -> float:
    """Seconds from starting `python` to the first generated token (on-disk Numba cache already warm)."""
    cmd = [sys.executable, "-c", _STARTUP_SCRIPT, model_dir, weight_dtype, str(prompt_tokens)]
    env = _child_env()
    subprocess.run(cmd, check=True, capture_output=True, env=env)   # make sure the cache is written
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


# --- the parent: run everything, print the table ----------------------------------

def _child_env() -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "minilm.bench", "worker", *args],
                          capture_output=True, text=True, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(model_dir: str, prompt_tokens: int = 32, new_tokens: int = 64, prefill_tokens: int = 512,
              backends=DEFAULT_BACKENDS, repeats: int = 5, startup: bool = True, log=print,
              bandwidth_gib: float = 1.0) -> dict:
    """Measure every backend in its own process; returns {"bandwidth": ..., "results": [...], ...}."""
    unknown = [b for b in backends if b not in SPECS]
    if unknown:
        raise ValueError(f"unknown benchmark backend {unknown[0]!r} (choose from: {', '.join(SPECS)})")
    if "transformers" in backends and not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        log("transformers or torch is not installed: skipping the transformers column (pip install minilm[test])")
        backends = tuple(b for b in backends if b != "transformers")
    log(f"model {model_dir}")
    # A shared machine's bandwidth drifts, so each child also times plain reads of its own weights
    # between its decode runs (the roofline of that backend); the 1 GiB reads here give context.
    bandwidths = [_run_child(["bandwidth", str(bandwidth_gib)])]
    log(f"streaming read bandwidth: {bandwidths[0]['bandwidth_gb_s']:.1f} GB/s ({bandwidths[0]['threads']} threads)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in backends:
            log(f"running {spec} ...")
            logits_path = os.path.join(tmp, f"{spec}.npy")
            r = _run_child(["measure", spec, model_dir, str(prompt_tokens), str(new_tokens),
                            str(prefill_tokens), str(repeats), logits_path])
            r["logits"] = np.load(logits_path)
            bandwidths.append(_run_child(["bandwidth", str(bandwidth_gib)]))
            log(f"  decode {r['decode_tok_s']:.1f} tok/s; reading its weights: {r['weight_read_gb_s']:.1f} GB/s; "
                f"1 GiB read after: {bandwidths[-1]['bandwidth_gb_s']:.1f} GB/s")
            results.append(r)
    bandwidth = {"bandwidth_gb_s": max(b["bandwidth_gb_s"] for b in bandwidths),
                 "measurements_gb_s": [b["bandwidth_gb_s"] for b in bandwidths], "threads": bandwidths[0]["threads"]}
    _derive(results)
    out = {"model_dir": model_dir, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
           "prefill_tokens": prefill_tokens, "repeats": repeats, "bandwidth": bandwidth, "results": results,
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if "numba-bf16" in backends:
        out["bf16_checkpoint_error"] = _run_child(["bf16check", model_dir, str(prompt_tokens)])["error"]
    if startup and any(SPECS[b][0] == "minilm-numba" for b in backends):
        out["startup_s"] = {SPECS[b][1]: measure_startup(model_dir, SPECS[b][1], prompt_tokens)
                            for b in backends if SPECS[b][0] == "minilm-numba"}
    return out


def _derive(results: list[dict]) -> None:
    by_name = {r["backend"]: r for r in results}
    hf, fp32 = by_name.get("transformers"), by_name.get("numba") or by_name.get("numpy")
    for r in results:
        r["gb_s"] = r["weight_bytes"] * r["decode_tok_s"] / 1e9
        r["pct_bandwidth"] = statistics.median(r["pct_bandwidth_runs"])
        r["roofline_tok_s"] = r["weight_read_gb_s"] * 1e9 / r["weight_bytes"]
        if hf:
            r["decode_vs_hf"] = r["decode_tok_s"] / hf["decode_tok_s"]
            r["prefill_vs_hf"] = r["prefill_tok_s"] / hf["prefill_tok_s"]
            r["same_tokens_as_hf"] = r["tokens"] == hf["tokens"]
            r["max_logit_diff_vs_hf"] = float(np.abs(r["logits"] - hf["logits"]).max())
        if fp32:
            r["max_logit_diff_vs_fp32"] = float(np.abs(r["logits"] - fp32["logits"]).max())
        r["peak_vs_weights"] = r["peak_rss"] / r["weight_bytes"]
        if r["generate_peak_rss"]:
            r["generate_peak_vs_weights"] = r["generate_peak_rss"] / r["weight_bytes"]


def format_table(report: dict) -> str:
    mb = 1e6
    rows = [("backend", "weights", "decode tok/s", "x HF", "GB/s", "% bw", "prefill tok/s", "x HF",
             "peak RSS gen / all (MB)", "x weights", "max|dlogit| vs HF / fp32", "same tokens")]
    nan = float("nan")
    for r in report["results"]:
        rows.append((
            r["backend"], f"{r['weight_bytes'] / mb:.0f} MB",
            f"{r['decode_tok_s']:.1f} (best {r['decode_tok_s_best']:.1f})", f"{r.get('decode_vs_hf', nan):.2f}",
            f"{r['gb_s']:.1f}", f"{r['pct_bandwidth']:.0f}%",
            f"{r['prefill_tok_s']:.0f}", f"{r.get('prefill_vs_hf', nan):.2f}",
            f"{(r['generate_peak_rss'] or 0) / mb:.0f} / {r['peak_rss'] / mb:.0f}",
            f"{r.get('generate_peak_vs_weights', nan):.2f} / {r['peak_vs_weights']:.2f}",
            f"{r.get('max_logit_diff_vs_hf', nan):.2g} / {r.get('max_logit_diff_vs_fp32', nan):.2g}",
            str(r.get("same_tokens_as_hf", "-"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    bw = report["bandwidth"]
    measured = ", ".join(f"{x:.1f}" for x in bw["measurements_gb_s"])
    lines += ["", f"model {report['model_dir']}",
              f"prompt {report['prompt_tokens']} tokens, {report['new_tokens']} new tokens (greedy), "
              f"prefill {report['prefill_tokens']} tokens; decode = median of {report['repeats']} runs",
              f"'% bw': each decode run's GB/s over the best of 5 plain reads of the same weight arrays "
              f"({bw['threads']} Numba threads, one launch) timed right after it; median over the runs",
              f"1 GiB streaming reads before, between and after the backends: {measured} GB/s"]
    for r in report["results"]:
        lines.append(f"  {r['backend']}: weight reads {', '.join(f'{x:.1f}' for x in r['weight_read_gb_s_runs'])} "
                     f"GB/s -> roofline {r['roofline_tok_s']:.0f} tok/s (median); "
                     f"decode runs {', '.join(f'{x:.1f}' for x in r['decode_tok_s_runs'])} tok/s "
                     f"= {', '.join(f'{x:.0f}' for x in r['pct_bandwidth_runs'])}% of those reads; "
                     f"load {r['load_s']:.1f} s, first token {r['first_token_s']:.2f} s")
        if r.get("generate_peak_private"):
            lines.append(f"    private memory while generating: peak {r['generate_peak_private'] / mb:.0f} MB = "
                         f"{r['generate_peak_private'] / r['weight_bytes']:.2f} x weights (resident too: "
                         f"{(r['resident_file_bytes'] or 0) / mb:.0f} MB of mapped files: shared libraries, and the checkpoint "
                         f"where it is memory-mapped)")
    if "bf16_checkpoint_error" in report:
        lines.append(f"numba-bf16 vs the numba float32 path holding the same bf16-rounded weights (a bf16 "
                     f"checkpoint): max |dlogit| {report['bf16_checkpoint_error']:.2g}; its difference to this "
                     f"float32 checkpoint's fp32 run is the rounding of the weights to bf16")
    for dtype, seconds in (report.get("startup_s") or {}).items():
        lines.append(f"second-process start to first token (numba, {dtype}, warm cache): {seconds:.2f} s")
    if report.get("load_average"):
        lines.append("load average at the end: " + ", ".join(f"{x:.2f}" for x in report["load_average"]))
    return "\n".join(lines)


# --- CLI -----------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint folder, hub id or .gguf file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help=f"comma-separated, from: {', '.join(SPECS)}")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-startup", action="store_true", help="skip the second-process start-up timing")
    parser.add_argument("--json", default=None, help="also write the full report to this file")


def main(args) -> int:
    from .resolve import resolve_model_dir      # default model, .gguf, folder or hub id, like every command
    model_dir = resolve_model_dir(args.model)
    for name in ("prompt_tokens", "new_tokens", "prefill_tokens", "repeats"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    report = run_bench(model_dir, args.prompt_tokens, args.new_tokens, args.prefill_tokens, backends,
                       args.repeats, startup=not args.no_startup, log=lambda m: print(m, file=sys.stderr))
    print(format_table(report))
    if args.json:
        for r in report["results"]:
            r.pop("logits", None)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _worker(argv: list[str]) -> None:
    if argv[0] == "bandwidth":
        print(json.dumps(measure_bandwidth(float(argv[1]))))
    elif argv[0] == "bf16check":
        print(json.dumps({"error": bf16_checkpoint_error(argv[1], int(argv[2]))}))
    else:
        spec, model_dir, p, n, prefill, repeats, logits_path = argv[1:8]
        print(json.dumps(measure(spec, model_dir, int(p), int(n), int(prefill), int(repeats), logits_path)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        _worker(sys.argv[2:])
    else:
        import argparse
        parser = argparse.ArgumentParser(prog="python -m minilm.bench")
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
