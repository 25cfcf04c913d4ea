"""Running a benchmark child: `python -m minilm.bench worker <command> <json>`, its progress relayed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


class ChildDied(RuntimeError):
    """A benchmark child killed by a signal (a crash inside a native library: SIGSEGV, SIGABRT)."""


def child_env(threads: int | None = None) -> dict:
    """The children import this same minilm (a checkout on PYTHONPATH stays first); `threads` fixes
    their thread count (Numba's pool, and through it torch's and llama.cpp's, see engines.py)."""
    env = dict(os.environ)
    if threads:
        env["NUMBA_NUM_THREADS"] = str(threads)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(command: str, payload: dict, log=print, threads: int | None = None) -> dict:
    """Run `python -m minilm.bench worker <command> <json>`: its stderr (progress) goes to the log
    as it comes; its last stdout line is the JSON result. A child killed by a signal raises ChildDied."""
    proc = subprocess.Popen([sys.executable, "-m", "minilm.bench", "worker", command, json.dumps(payload)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(threads))
    errors = []
    for line in proc.stderr:
        line = line.rstrip()
        if line.startswith("  ") and ": " in line:          # a progress line of measure.progress()
            log(line)
        else:
            errors.append(line)
    out = proc.stdout.read()
    if proc.wait() < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "a signal"
        raise ChildDied(f"benchmark child {command} was killed by {name}" + "\n" + "\n".join(errors[-30:]))
    if proc.returncode != 0:                 # the exception's line first: the CLI shows one line
        last = next((line for line in reversed(errors) if line.strip()), "no output")
        raise RuntimeError(f"benchmark child {command} failed: {last.strip()}\n" + "\n".join(errors[-30:]))
    return json.loads(out.strip().splitlines()[-1])


