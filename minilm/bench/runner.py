"""Running a benchmark child: `python -m minilm.bench worker <command> <json>`, its progress relayed."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def child_env() -> dict:
    """The children import this same minilm (a checkout on PYTHONPATH stays first)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(command: str, payload: dict, log=print) -> dict:
    """Run `python -m minilm.bench worker <command> <json>`: its stderr (progress) goes to the log
    as it comes; its last stdout line is the JSON result."""
    proc = subprocess.Popen([sys.executable, "-m", "minilm.bench", "worker", command, json.dumps(payload)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    errors = []
    for line in proc.stderr:
        line = line.rstrip()
        if line.startswith("  ") and ": " in line:          # a progress line of measure.progress()
            log(line)
        else:
            errors.append(line)
    out = proc.stdout.read()
    if proc.wait() != 0:                     # the exception's line first: the CLI shows one line
        last = next((line for line in reversed(errors) if line.strip()), "no output")
        raise RuntimeError(f"benchmark child {command} failed: {last.strip()}\n" + "\n".join(errors[-30:]))
    return json.loads(out.strip().splitlines()[-1])


