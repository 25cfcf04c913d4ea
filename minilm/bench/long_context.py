"""`minilm bench --long 2048,4096,8192`: long prompts, minilm (chunked prefill) against transformers.

For each length: the time to the first generated token (the whole prompt's prefill, then one
token) and the prompt tokens per second that makes, each engine in its own process.
"""
from __future__ import annotations

import time


def measure_long(backend: str, model_dir: str, lengths: list) -> dict:
    from .engines import make_engine, parse_spec
    from .measure import progress, prompt_ids, proc_status_bytes, reset_peak_rss
    engine = make_engine(parse_spec(backend), model_dir, None)
    engine.generate(prompt_ids(8, engine.vocab_size), 2)                       # warm-up
    rows = []
    for length in lengths:
        ids = prompt_ids(length, engine.vocab_size, seed=2)
        reset_peak_rss()
        t = time.perf_counter()
        engine.generate(ids, 1)
        seconds = time.perf_counter() - t
        rows.append({"length": length, "first_token_s": seconds, "prefill_tok_s": length / seconds,
                     "peak_rss": proc_status_bytes("VmHWM")})
        progress(backend, f"{length} tokens: first token after {seconds:.1f} s")
    return {"backend": backend, "rows": rows}


def long_context(model_dir: str, lengths: list, backends=("numba", "transformers"), log=print) -> dict:
    import os
    from .runner import run_child
    results = {}
    for backend in backends:
        log(f"{backend} ...")
        results[backend] = run_child("long", {"backend": backend, "model_dir": model_dir, "lengths": lengths}, log)
    return {"model_dir": model_dir, "lengths": lengths, "results": results, "load_average": os.getloadavg()}


def format_long(report: dict) -> str:
    from .report import gb, table
    rows = [("prompt tokens", *[f"{b}: first token s / prefill tok/s / peak" for b in report["results"]])]
    for i, length in enumerate(report["lengths"]):
        cells = []
        for result in report["results"].values():
            r = result.get("rows", [{}] * len(report["lengths"]))[i]
            cells.append(f"{r['first_token_s']:.1f} / {r['prefill_tok_s']:.0f} / {gb(r['peak_rss'])}" if r else "-")
        rows.append((str(length), *cells))
    return "\n".join([f"model {report['model_dir']}; load average {', '.join(f'{x:.2f}' for x in report['load_average'])}",
                      ""] + table(rows))
