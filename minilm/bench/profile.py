"""`minilm bench --profile`: where the time of one decode step goes, op by op.

Every compute op of the model's backend is wrapped with a clock for a few decode steps; the rest of
a step (the model's Python: reshapes, the cache, masks, sampling) is what the ops do not account for.
"""
from __future__ import annotations

import time
from collections import defaultdict

from ..ops.contract import OPS

GLUE = ("asarray", "to_numpy", "threads", "supports", "prepare_weight")


def profile_decode(model, prompt, steps: int = 8) -> dict:
    """{op: [calls, seconds]} per decode step, plus 'step' (the whole step) and 'other'."""
    from ..generate import generate_stream
    backend, totals = model.backend, defaultdict(lambda: [0, 0.0])
    originals = {op: getattr(backend, op) for op in OPS if op not in GLUE}

    def timed(op, function):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[op][0] += 1
                totals[op][1] += time.perf_counter() - t
        return wrapper

    model.generate(prompt, max_new_tokens=2, eos_token_id=[])                  # JIT, caches
    stream = generate_stream(model, prompt, max_new_tokens=steps + 1, eos_token_id=[], threads=backend.threads())
    next(stream)                                                               # the prefill, not profiled
    for op, function in originals.items():
        setattr(backend, op, timed(op, function))
    try:
        start = time.perf_counter()
        for _ in stream:
            pass
        elapsed = time.perf_counter() - start
    finally:
        for op, function in originals.items():
            setattr(backend, op, function)
    per_step = {op: [calls / steps, seconds / steps] for op, (calls, seconds) in totals.items()}
    per_step["other"] = [0, elapsed / steps - sum(s for _, s in per_step.values())]
    per_step["step"] = [1, elapsed / steps]
    return per_step


def format_profile(profile: dict, title: str) -> str:
    from .report import table
    step = profile["step"][1]
    rows = [("op", "calls / step", "ms / step", "share")]
    for op, (calls, seconds) in sorted(profile.items(), key=lambda kv: -kv[1][1]):
        if op != "step":
            rows.append((op, f"{calls:.0f}", f"{1e3 * seconds:.2f}", f"{100 * seconds / step:.0f}%"))
    rows.append(("whole step", "", f"{1e3 * step:.2f}", "100%"))
    return "\n".join([title, ""] + table(rows))
