"""Step 3: the test suite's CUDA tests on the device, and the pytest plugin that picks them.

The CUDA tests are parametrized over backends; their "cuda" case runs when CuPy sees a device
(`minilm.cuda.gpu_available()`) and skips otherwise. This step runs pytest on the test files that
ask gpu_available(), with the plugin of pytest_plugin.py keeping only the tests that touch the
device; their harness ("cuda-emulated") cases ran in CI already. Tolerances are the tests' own.
A dry run lists the same selection without running it.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from .pytest_plugin import COLLECT_AS_IF_GPU


# --- running it --------------------------------------------------------------------------------

def device_test_files(tests_dir: str) -> list[str]:
    """The test files that ask whether a GPU is there."""
    files = []
    for path in sorted(glob.glob(os.path.join(tests_dir, "test_*.py"))):
        with open(path, encoding="utf-8") as f:
            if "gpu_available" in f.read():
                files.append(path)
    return files


def pytest_command(files: list[str], xml: str, dry_run: bool) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-p", "minilm.gpu_check.pytest_plugin", "-q", "-rfEs",
               "-p", "no:cacheprovider", f"--junitxml={xml}", *files]
    return command + ["--collect-only"] if dry_run else command


def junit_counts(xml: str) -> dict:
    """Counts and the failing tests' ids from pytest's JUnit XML."""
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failing = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failing": failing}


def collected_ids(output: str) -> list[str]:
    """The node ids `pytest -q --collect-only` prints, one a line."""
    return [line.strip() for line in output.splitlines() if "::" in line and not line.startswith(" ")]


def run_device_tests(tests_dir: str, out_dir: str, dry_run: bool, timeout: float, log) -> dict:
    from ..bench.runner import child_env
    files = device_test_files(tests_dir) if os.path.isdir(tests_dir) else []
    if not files:
        return {"status": "failed", "error": f"no CUDA test files in {tests_dir!r}: run from a checkout of the "
                                             "repository or pass --tests"}
    xml, log_path = os.path.join(out_dir, "device-tests.xml"), os.path.join(out_dir, "device-tests.log")
    env = {**child_env(), **({COLLECT_AS_IF_GPU: "1"} if dry_run else {})}
    result = {"files": [os.path.relpath(f, os.path.dirname(tests_dir)) for f in files], "log": "device-tests.log"}
    try:
        proc = subprocess.run(pytest_command(files, xml, dry_run), cwd=os.path.dirname(os.path.abspath(tests_dir)),
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        _write(log_path, e.stdout, e.stderr)
        return {**result, "status": "failed", "error": f"pytest ran past {timeout:.0f} s"}
    _write(log_path, proc.stdout, proc.stderr)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    log(f"  pytest: {summary}")
    if dry_run:
        ids = collected_ids(proc.stdout)
        ok = proc.returncode == 0 and ids
        return {**result, "status": "dry run" if ok else "failed", "collected": len(ids), "ids": ids,
                "summary": summary, **({} if ok else {"error": f"collection failed (pytest exit {proc.returncode})"})}
    counts = junit_counts(xml) if os.path.exists(xml) else {}
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0
    return {**result, **counts, "summary": summary, "status": "passed" if ok else "failed",
            **({} if ok else {"error": f"pytest exit {proc.returncode}: {summary}"})}


def _write(path: str, *texts) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            if text:
                f.write(text if isinstance(text, str) else text.decode(errors="replace"))
