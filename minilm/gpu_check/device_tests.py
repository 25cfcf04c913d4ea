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
    xml = os.path.join(out_dir, "device-tests.xml")
    env = {**child_env(), **({COLLECT_AS_IF_GPU: "1"} if dry_run else {})}
    status, output = run_pytest(pytest_command(files, xml, dry_run), os.path.dirname(os.path.abspath(tests_dir)),
                                env, os.path.join(out_dir, "device-tests.log"), timeout)
    summary = (output.strip().splitlines() or ["no output"])[-1]
    log(f"  pytest: {summary}")
    result = {"files": [os.path.relpath(f, os.path.dirname(tests_dir)) for f in files], "log": "device-tests.log",
              "summary": summary}
    if status is None:
        return {**result, "status": "failed", "error": f"pytest ran past {timeout:.0f} s (its output so far: "
                                                       "device-tests.log)"}
    return {**result, **(collection_result(status, output) if dry_run else run_result(status, xml, summary))}


def run_pytest(command: list[str], cwd: str, env: dict, log_path: str, timeout: float) -> tuple[int | None, str]:
    """pytest's exit status (None: stopped at the timeout) and its output, written to log_path as it comes."""
    with open(log_path, "w+", encoding="utf-8") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = None
        out.seek(0)
        return status, out.read()


def collection_result(status: int, output: str) -> dict:
    """A dry run: the tests that would run on the device."""
    ids = collected_ids(output)
    ok = status == 0 and ids
    return {"status": "dry run" if ok else "failed", "collected": len(ids), "ids": ids,
            **({} if ok else {"error": f"collection failed (pytest exit {status})"})}


def run_result(status: int, xml: str, summary: str) -> dict:
    """A real run: passed when pytest says so and at least one test passed (not all skipped)."""
    counts = junit_counts(xml) if os.path.exists(xml) else {}
    ok = status == 0 and counts.get("passed", 0) > 0
    return {**counts, "status": "passed" if ok else "failed",
            **({} if ok else {"error": f"pytest exit {status}: {summary}"})}
