"""`minilm bench`: speed, memory and accuracy of every backend and weight format, against
transformers and llama.cpp, measured in one run on one machine.

    minilm bench                                  # SmolLM2-135M-Instruct: float32, bf16, the GGUF, transformers
    minilm bench --quick                          # about a minute
    minilm bench --backends numba-gguf,llama.cpp  # the shipped Q4_1 GGUF against llama.cpp on the same file
    minilm bench --model out/ --gguf out.gguf     # a real-size checkpoint (minilm random-checkpoint)
    minilm bench --quality                        # perplexity and agreement of every weight format
    minilm bench --long 2048,4096                 # prefill and time to first token on long prompts
    minilm bench --busy                           # decode while another process holds a core

Each backend runs in its own child process, one after the other, so that its memory is its own
and no two thread pools compete (what a child measures: minilm/bench/measure.py; the backend
names: minilm/bench/engines.py). Speed is never asserted by the test suite; this is how it is
measured, and docs/benchmarks.md holds the results.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np

from .engines import Unavailable, parse_spec, weight_files
from .measure import Settings
from .report import gb, ratio, table
from .runner import ChildDied, run_child

DEFAULT_BACKENDS = ("numba", "numba-bf16", "numba-gguf", "transformers", "llama.cpp")
QUICK = Settings(prompt_tokens=16, new_tokens=16, prefill_tokens=128, repeats=1)


# --- the run ----------------------------------------------------------------------------------------

def estimate_seconds(backends, weight_bytes: int, settings: Settings) -> float:
    """A rough total, from the checkpoint size alone: decode reads every weight once per token (~10 GB/s
    on a laptop), prefill is ~2 flops per weight per token (~30 GFLOP/s), plus ~15 s per child."""
    params = weight_bytes / 4
    per_backend = (15 + 2 * weight_bytes / 2e9
                   + settings.repeats * (settings.new_tokens + 1 + settings.prompt_tokens / 8) * weight_bytes / 1e10
                   + max(2, settings.repeats // 2) * (16 + settings.prefill_tokens) * 2 * params / 3e10)
    slow = {"numpy": 4, "transformers": 2}
    return sum(per_backend * slow.get(b, 1) for b in backends)


def run_bench(model_dir: str, gguf: str | None, backends=DEFAULT_BACKENDS, settings: Settings = Settings(),
              log=print, threads: int | None = None) -> dict:
    """Measure every backend in its own process; unavailable ones are named with the reason.
    `threads` fixes every engine's thread count (default: all cores)."""
    specs = [parse_spec(b) for b in backends]                   # unknown names fail before any work
    results, unavailable, failed = [], {}, {}
    start_machine = machine(threads)                            # before any child: the load the run starts on
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            try:
                weight_files(spec, model_dir, gguf)
            except Unavailable as e:
                unavailable[spec.name] = str(e)
                log(f"{spec.name}: unavailable: {e}")
                continue
            log(f"{spec.name} ...")
            payload = {"backend": spec.name, "model_dir": model_dir, "gguf": gguf, "settings": settings.__dict__,
                       "logits_path": os.path.join(tmp, f"{spec.name}.npy")}
            load_before = os.getloadavg()
            try:
                r = measure_in_child(spec, payload, log, threads)
            except RuntimeError as e:                           # one backend's failure does not end the run
                failed[spec.name] = str(e).splitlines()[0]
                log(f"{spec.name}: FAILED: {failed[spec.name]}")
                continue
            if "unavailable" in r:
                unavailable[spec.name] = r["unavailable"]
                log(f"{spec.name}: unavailable: {r['unavailable']}")
                continue
            r["load_average_before"], r["load_average_after"] = load_before, os.getloadavg()
            r["logits"] = np.load(payload["logits_path"]) if os.path.exists(payload["logits_path"]) else None
            results.append(r)
    compare(results)
    return {"model_dir": model_dir, "gguf": gguf, "settings": settings.__dict__, "results": results,
            "unavailable": unavailable, "failed": failed, "machine": start_machine,
            "load_average_after": os.getloadavg()}


def measure_in_child(spec, payload: dict, log, threads: int | None) -> dict:
    """One backend's child. llama.cpp evaluates prompts in batches of 512 tokens; where that crashes
    (llama-cpp-python 0.3.36's AMX path died with SIGSEGV on a 16-token batch), it is measured again
    one token per batch, and the report says so."""
    try:
        return run_child("measure", payload, log, threads)
    except ChildDied as e:
        if spec.engine != "llama.cpp":
            raise
        log(f"{spec.name}: {str(e).splitlines()[0]}; measuring again one token per batch")
        r = run_child("measure", payload | {"llama_batch": 1}, log, threads)
        r["description"] += f" (batches of 512 crashed: {str(e).splitlines()[0].rsplit(' ', 1)[-1]})"
        return r


def compare(results: list[dict]) -> None:
    """Ratios against transformers and llama.cpp, and logits/tokens against the float32 reference."""
    by_name = {r["backend"]: r for r in results}
    if "transformers" not in by_name and "transformers-bf16" in by_name:   # a bf16 checkpoint's baseline
        by_name["transformers"] = by_name["transformers-bf16"]
    reference = by_name.get("transformers") or by_name.get("numba") or by_name.get("numpy")
    for r in results:
        for other in ("transformers", "llama.cpp"):
            if other in by_name and r is not by_name[other]:
                r[f"decode_vs_{other}"] = r["decode_tok_s"] / by_name[other]["decode_tok_s"]
                r[f"prefill_vs_{other}"] = {k: v / by_name[other]["prefill_tok_s"][k]
                                            for k, v in r["prefill_tok_s"].items()}
        if reference is not None and r is not reference:
            r["reference"] = reference["backend"]
            r["same_tokens"] = r["tokens"] == reference["tokens"]
            if r.get("logits") is not None and reference.get("logits") is not None:
                r["max_logit_diff"] = float(np.abs(r["logits"] - reference["logits"]).max())


def available_files(spec, model_dir: str, gguf: str | None) -> list[str]:
    try:
        return weight_files(spec, model_dir, gguf)
    except Unavailable:
        return []


ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve")


def machine(threads: int | None = None) -> dict:
    """The CPU (model name, the instruction-set flags that matter to the kernels, the kernel path
    minilm's fast mode compiles to), cores, threads and the load average now."""
    cpu, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model") and cpu == "unknown CPU":
                    cpu = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    import numba
    from ..ops.numba_simd import SIMD_LEVEL
    return {"cpu": cpu, "isa": [f for f in ISA_FLAGS if f in flags], "kernel_path": SIMD_LEVEL,
            "cores": os.cpu_count(), "numba_threads": threads or numba.config.NUMBA_NUM_THREADS,
            "load_average_before": os.getloadavg()}


def machine_line(m: dict) -> str:
    """One line: CPU, ISA flags, minilm's kernel path, cores and threads."""
    isa = " ".join(m.get("isa", [])) or "no flags read"
    return (f"machine: {m['cpu']} ({isa}; minilm fast kernels: {m.get('kernel_path', '?')}), "
            f"{m['cores']} cores, {m['numba_threads']} threads")


# --- the report ---------------------------------------------------------------------------------------

def loads(values) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def speed_figure(value: float) -> str:
    """Tokens/s with the digits that matter: 196, 17.8, 2.83 (a 7B model's prefill is a few per second)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_report(report: dict) -> str:
    s = report["settings"]
    results = report["results"]
    p = str(s["prefill_tokens"])
    speed = [("backend", "weights", "load cold / warm", "prefill 16 / " + p + " tok/s", "decode tok/s",
              "vs transformers", "vs llama.cpp", "% of weight read")]
    for r in results:
        cold = "-" if r["load_cold_s"] is None else f"{r['load_cold_s']:.1f}"
        prefill = f"{speed_figure(r['prefill_tok_s']['16'])} / {speed_figure(r['prefill_tok_s'][p])}"
        speed.append((r["backend"], gb(r["weight_bytes"]), f"{cold} / {r['load_warm_s']:.1f} s", prefill,
                      speed_figure(r["decode_tok_s"]), ratio(r, "decode_vs_transformers"), ratio(r, "decode_vs_llama.cpp"),
                      f"{r['pct_roofline']:.0f}%"))
    memory = [("backend", "storage", "peak resident / private", "private / weights", "KV cache / token",
               "max |dlogit| vs", "same tokens")]
    for r in results:
        private = r["generate_peak_private"]
        memory.append((r["backend"], r["description"], f"{gb(r['generate_peak_rss'])} / {gb(private)}",
                       "-" if not private else f"{private / r['weight_bytes']:.2f}",
                       f"{r['kv_bytes_per_token'] / 1024:.0f} KiB",
                       "-" if r.get("max_logit_diff") is None else f"{r['max_logit_diff']:.2g} ({r['reference']})",
                       str(r.get("same_tokens", "-"))))
    m = report["machine"]
    lines = [f"model {report['model_dir']}" + (f", GGUF {report['gguf']}" if report.get("gguf") else ""),
             f"{machine_line(m)}; load average before {loads(m['load_average_before'])}, after "
             f"{loads(report['load_average_after'])}",
             f"prompt {s['prompt_tokens']} tokens, {s['new_tokens']} new tokens (greedy), decode = median of "
             f"{s['repeats']} runs; prefill = one forward, last logits only", ""]
    lines += table(speed) + [""] + table(memory)
    lines += ["", "'% of weight read': decode GB/s over a plain read of the same weight bytes timed right after "
                  "each run (median); private memory = RssAnon (a memory map's pages are shared, not private)"]
    for r in results:
        lines.append(f"  {r['backend']}: decode runs {', '.join(f'{x:.1f}' for x in r['decode_tok_s_runs'])} "
                     f"tok/s against reads of {', '.join(f'{x:.1f}' for x in r['weight_read_gb_s_runs'])} GB/s; "
                     f"first token {r['first_token_s']:.2f} s; load average {loads(r['load_average_before'])} "
                     f"before, {loads(r['load_average_after'])} after")
    for name, reason in report["unavailable"].items():
        lines.append(f"not run: {name}: {reason}")
    for name, error in report.get("failed", {}).items():
        lines.append(f"FAILED: {name}: {error}")
    return "\n".join(lines)


# --- CLI ----------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint folder, hub id or .gguf file (default: SmolLM2-135M-Instruct, offline)")
    parser.add_argument("--gguf", default=None,
                        help="the GGUF file for numba-gguf and llama.cpp (default: the model's own GGUF)")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help="comma-separated backend names (default: %(default)s); see minilm/bench/engines.py: "
                             "numpy, numba, numba-bf16, numba-<q8_0|q4_0|q4_1|int8|int4|fp4|nf4>[-exact], "
                             "numba-gguf[-exact], transformers, transformers-bf16, llama.cpp")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs: about a minute on SmolLM2")
    parser.add_argument("--prompt-tokens", type=int, default=Settings.prompt_tokens,
                        help="decode prompt length (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=Settings.new_tokens,
                        help="tokens generated per decode run (default: %(default)s)")
    parser.add_argument("--prefill-tokens", type=int, default=Settings.prefill_tokens,
                        help="long prefill length, beside 16 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=Settings.repeats,
                        help="decode runs per backend (default: %(default)s)")
    parser.add_argument("--quality", action="store_true",
                        help="instead: perplexity, top-1 agreement and logit error of every weight format")
    parser.add_argument("--long", default=None, metavar="LENGTHS",
                        help="instead: prefill speed and time to first token at these prompt lengths (e.g. 2048,4096)")
    parser.add_argument("--busy", action="store_true",
                        help="instead: decode speed with another process holding one core, by thread count "
                             "(the first of --backends if given, else numba; --new-tokens per reply)")
    parser.add_argument("--profile", default=None, metavar="BACKEND",
                        help="instead: the time of one decode step op by op, for one backend name (e.g. numba-bf16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every engine (minilm, transformers, llama.cpp; default: all cores)")
    parser.add_argument("--json", default=None, help="also write the full report to this file")


def resolve_inputs(model: str | None, gguf: str | None) -> tuple[str, str | None]:
    """(checkpoint folder, GGUF file): a .gguf model gives both (its folder holds config and tokenizer
    only: backends that need a safetensors checkpoint say so); the default model gives both in full."""
    from ..resolve import resolve_model_dir
    if model is None and gguf is None:
        from ..default_model import find_default_gguf
        try:
            gguf = find_default_gguf()
        except Exception:
            gguf = None
    if model is not None and model.endswith(".gguf"):
        gguf = gguf or model
        return resolve_model_dir(model, weights=False), gguf     # the GGUF runs as stored: no float32 copy
    return resolve_model_dir(model), gguf


def main(args) -> int:
    for name in ("prompt_tokens", "new_tokens", "prefill_tokens", "repeats") + (("threads",) if args.threads else ()):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive integer")
    model_dir, gguf = resolve_inputs(args.model, args.gguf)
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    status = 0
    if args.quality:
        from .quality import format_quality, quality_table
        report = quality_table(model_dir, gguf, log=log)
        print(format_quality(report))
    elif args.long:
        from .long_context import format_long, long_context
        lengths = [int(x) for x in args.long.split(",") if x.strip()]
        report = long_context(model_dir, lengths, log=log)
        print(format_long(report))
    elif args.profile:
        from .profile import format_profile, profile_decode
        from .engines import make_engine
        from .measure import prompt_ids
        engine = make_engine(parse_spec(args.profile), model_dir, gguf)
        report = profile_decode(engine.model, prompt_ids(args.prompt_tokens, engine.vocab_size))
        print(format_profile(report, f"{args.profile} on {model_dir}: one decode step after a "
                                     f"{args.prompt_tokens}-token prompt; load average "
                                     f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"))
    elif args.busy:
        from .busy import busy_machine, format_busy
        chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
        backend = chosen[0] if args.backends != ",".join(DEFAULT_BACKENDS) else "numba"   # one backend: the first
        report = busy_machine(model_dir, gguf, backend=backend, log=log, tokens=args.new_tokens)
        print(format_busy(report))
    else:
        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        settings = QUICK if args.quick else Settings(args.prompt_tokens, args.new_tokens, args.prefill_tokens,
                                                     args.repeats)
        files = {f for spec in map(parse_spec, backends) for f in available_files(spec, model_dir, gguf)}
        size = max((os.path.getsize(f) for f in files), default=0)
        log(f"minilm bench: {len(backends)} backends, estimated {estimate_seconds(backends, size, settings) / 60:.0f}"
            f" min (a rough figure from the checkpoint's {size / 1e9:.2f} GB)")
        start = time.perf_counter()
        report = run_bench(model_dir, gguf, backends, settings, log=log, threads=args.threads)
        log(f"took {(time.perf_counter() - start) / 60:.1f} min")
        print(format_report(report))
        status = 1 if report["failed"] else 0
    if args.json:
        results = report.get("results", [])
        for r in results.values() if isinstance(results, dict) else results:   # --long: {backend: result}
            r.pop("logits", None)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    return status
