"""`minilm gpu-check` (or `python -m minilm.gpu_check`): the whole CUDA path on a real GPU, in one run.

    minilm gpu-check --out DIR             # on a machine with an NVIDIA GPU (sized for < 8 min on an H100)
    minilm gpu-check --out DIR --dry-run   # the same sequence on cuda-emulated, tiny models, no GPU needed
    minilm gpu-check --fetch-wheels DIR    # the wheels a bare GPU image lacks (wheels.py)

Steps, in order (each one's result goes into DIR/report.json and DIR/report.md):

    versions      device, driver, CUDA, NVRTC, CuPy and package versions          (versions.py)
    compare       backend="cuda" against "numpy": 3 families x 10 weight formats   (compare.py)
    device-tests  the test suite's CUDA tests, on the device                       (device_tests.py)
    speed         Llama-2-7B-size bf16 and q4_0 decode and prefill, against PyTorch
                  eager bf16, as tokens/s and as a fraction of the copy bandwidth  (speed.py)

The speed step's checkpoints are written by child processes started first, so that writing them
overlaps the other steps. The exit status is 1 when a check failed (a comparison beyond its
tolerance, a failing device test, an engine that raised), 0 otherwise; speed goals are reported,
not checked. See docs/cuda.md, "On a real GPU".
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback

from .. import __version__

STEPS = ("versions", "compare", "device-tests", "speed")
DEVICE_TESTS_TIMEOUT_S = 300


def log(message: str) -> None:
    print(message, flush=True)


def run_step(name: str, function, *args) -> dict:
    """One step, timed; an exception fails the step (with its traceback in the report) and the run goes on."""
    log(f"[{name}]")
    start = time.perf_counter()
    try:
        result = function(*args)
    except Exception as e:
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        log(f"  FAILED: {result['error']}")
    result["seconds"] = time.perf_counter() - start
    log(f"  {name}: {result['status']} ({result['seconds']:.0f} s)")
    return result


def run_check(out: str, dry_run: bool, families, formats, steps, tests_dir: str, scratch: str | None) -> dict:
    """Every step of `steps` in order; the report, also written into `out`."""
    from ..cuda.backend import NoGpuError, gpu_available
    from . import compare, device_tests, speed, versions
    from .report import write_reports
    if not dry_run and not gpu_available():
        raise NoGpuError("gpu-check: no GPU found (CuPy sees no CUDA device); --dry-run runs the same sequence "
                         "on the CPU harness")
    os.makedirs(out, exist_ok=True)
    backend = "cuda-emulated" if dry_run else "cuda"
    start = time.perf_counter()
    report = {"minilm": __version__, "dry_run": dry_run, "backend": backend, "steps": {}}
    with tempfile.TemporaryDirectory(prefix="minilm-gpu-check-", dir=scratch) as work:
        writers = speed.CheckpointWriters(work, speed.DRY_RUN if dry_run else speed.REAL) if "speed" in steps \
            else None
        try:
            run = {"versions": lambda: versions.run_versions(dry_run, log),
                   "compare": lambda: compare.run_compare(backend, families, formats, log),
                   "device-tests": lambda: device_tests.run_device_tests(tests_dir, out, dry_run,
                                                                         DEVICE_TESTS_TIMEOUT_S, log),
                   "speed": lambda: speed.run_speed(writers, dry_run, log)}
            for name in steps:
                report["steps"][name] = run_step(name, run[name])
        finally:
            if writers:
                writers.close()
    report["seconds"] = time.perf_counter() - start
    report["passed"] = all(step["status"] != "failed" for step in report["steps"].values())
    write_reports(report, out)
    log(f"gpu-check: {'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s; "
        f"reports in {os.path.join(out, 'report.md')} and report.json")
    return report


# --- CLI ----------------------------------------------------------------------------------------

def default_tests_dir() -> str:
    """The checkout's tests/ folder (next to the minilm package), else ./tests."""
    beside = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests")
    return beside if os.path.isdir(beside) else os.path.abspath("tests")


def names(value: str, allowed, what: str) -> tuple:
    """'a,b' -> ('a', 'b'), every name checked against `allowed`."""
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise ValueError(f"--{what}={value!r}: choose from {', '.join(allowed)}")
    return chosen


def add_arguments(parser) -> None:
    from .compare import FAMILIES, FORMATS
    parser.add_argument("--out", default=None, help="folder for report.json, report.md and the device tests' log")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the sequence on cuda-emulated (the CPU harness): tiny models, the device tests "
                             "listed but not run, the speed step on a tiny model (its numbers mean nothing)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="families to compare (default: %(default)s)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="weight formats to compare (default: %(default)s)")
    parser.add_argument("--steps", default=",".join(STEPS), help="steps to run, in order (default: %(default)s)")
    parser.add_argument("--tests", default=None,
                        help="the repository's tests/ folder (default: the one beside the minilm package, else "
                             "./tests)")
    parser.add_argument("--scratch", default=None,
                        help="where the speed step writes its checkpoints (17 GB; default: the temp folder)")
    parser.add_argument("--fetch-wheels", default=None, metavar="DIR",
                        help="instead: put the wheels a bare GPU machine needs into DIR (see docs/cuda.md)")


def main(args) -> int:
    from .compare import FAMILIES, FORMATS
    if args.fetch_wheels:
        from .wheels import fetch_wheels
        fetch_wheels(args.fetch_wheels)
        return 0
    if not args.out:
        raise ValueError("gpu-check needs --out DIR (or --fetch-wheels DIR)")
    report = run_check(args.out, args.dry_run, names(args.families, FAMILIES, "families"),
                       names(args.formats, FORMATS, "formats"), names(args.steps, STEPS, "steps"),
                       args.tests or default_tests_dir(), args.scratch)
    return 0 if report["passed"] else 1
