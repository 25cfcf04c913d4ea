"""`minilm bench --busy`: decode speed when another process holds one core.

The load generator is a second Python process spinning in `while True: pass` (one core, always
runnable), started before and stopped after each measurement. In the same run, for the idle and
the busy machine: decode tokens/s with the default settings (the thread count adapts per step:
minilm.generate.ThreadTuner), with one thread, and with all threads fixed. The target: busy with
the default settings >= 0.8x the best single-thread rate; idle no slower than fixed all-threads.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

SPINNER = "while True: pass"
SETTINGS = {"default (adapts)": None, "1 thread": 1, "all threads": 0}


def decode_speed(model_dir: str, gguf: str | None, backend: str, threads: list, tokens: int = 64,
                 repeats: int = 3) -> dict:
    """In a child: decode tok/s (median of runs) for each thread setting (None adapts, 0 = all)."""
    import statistics

    from ..generate import generate_stream
    from .engines import make_engine, parse_spec
    from .measure import progress, prompt_ids
    engine = make_engine(parse_spec(backend), model_dir, gguf)
    model, full = engine.model, engine.model.backend.threads()
    ids = prompt_ids(16, engine.vocab_size)
    engine.generate(ids, 2)
    speeds = {}
    for setting in threads:
        fixed = None if setting is None else (setting or full)
        runs = []
        for _ in range(repeats):
            times, t0 = [], time.perf_counter()
            for _ in generate_stream(model, ids, max_new_tokens=tokens + 1, eos_token_id=[], threads=fixed):
                times.append(time.perf_counter() - t0)
            runs.append(tokens / (times[-1] - times[0]))
            model.backend.threads(full)
        speeds[str(setting)] = statistics.median(runs)
        progress(backend, f"threads={setting}: {speeds[str(setting)]:.1f} tok/s")
    return {"speeds": speeds, "threads": full}


def busy_machine(model_dir: str, gguf: str | None, backend: str = "numba", log=print, tokens: int = 64,
                 repeats: int = 3) -> dict:
    from .runner import run_child
    rows = {}
    for condition in ("idle", "busy"):
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER]) if condition == "busy" else None
        try:
            time.sleep(1.0 if spinner else 0)
            log(f"{condition} machine ...")
            rows[condition] = run_child("busy", {"model_dir": model_dir, "gguf": gguf, "backend": backend,
                                                 "threads": list(SETTINGS.values()), "tokens": tokens,
                                                 "repeats": repeats}, log)["speeds"]
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    return {"model_dir": model_dir, "backend": backend, "rows": rows, "load_average": os.getloadavg()}


def format_busy(report: dict) -> str:
    from .report import table
    rows = [("machine", *SETTINGS)]
    for condition, speeds in report["rows"].items():
        rows.append((condition, *[f"{speeds[str(v)]:.1f} tok/s" for v in SETTINGS.values()]))
    busy = report["rows"]["busy"]
    ratio = busy["None"] / busy["1"]
    idle = report["rows"]["idle"]
    return "\n".join([f"model {report['model_dir']} ({report['backend']}); load generator: `python -c "
                      f"'{SPINNER}'`; load average {', '.join(f'{x:.2f}' for x in report['load_average'])}", ""]
                     + table(rows)
                     + ["", f"busy, default settings: {ratio:.2f}x the single-thread rate (target >= 0.8); idle: "
                            f"{idle['None'] / idle['0']:.2f}x fixed all-threads"])
