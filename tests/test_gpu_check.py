"""`minilm gpu-check`: its dry run on cuda-emulated passes and reports every step; a broken kernel, a
failing device test and a missing GPU each make it fail (see minilm/gpu_check)."""
import json
import subprocess
import sys
import textwrap

import pytest

import cupy  # noqa: F401

from minilm.cli import main  # noqa: E402
from minilm.cuda import gpu_available, registry  # noqa: E402
from minilm.gpu_check.device_tests import run_device_tests  # noqa: E402
from minilm.gpu_check.wheels import fetch_wheels  # noqa: E402
from minilm.testing import LOGIT_TOLERANCE  # noqa: E402

TINY = ["--families", "llama", "--formats", "float32,q4_0"]


def read_report(folder):
    with open(folder / "report.json") as f:
        return json.load(f), (folder / "report.md").read_text()


def test_dry_run_passes_and_reports_every_step(tmp_path):
    out = tmp_path / "report"
    assert main(["gpu-check", "--out", str(out), "--dry-run", *TINY]) == 0
    report, md = read_report(out)
    steps = report["steps"]
    assert report["passed"] and report["backend"] == "cuda-emulated"
    assert {name: s["status"] for name, s in steps.items()} == {
        "versions": "passed", "compare": "passed", "device-tests": "dry run", "speed": "dry run"}
    assert steps["versions"]["packages"]["gguf"] and steps["versions"]["device"]["device"].startswith("cuda-emulated")

    cases = {(c["family"], c["format"]): c for c in steps["compare"]["cases"]}
    assert set(cases) == {("llama", "float32"), ("llama", "q4_0")}
    assert cases["llama", "q4_0"]["weight_formats"] == ["q4_0"]           # every matrix as stored
    for c in cases.values():
        assert 0 < c["forward_max_diff"] < LOGIT_TOLERANCE and 0 < c["decode_max_diff"] < LOGIT_TOLERANCE
        assert c["same_tokens"] and len(c["tokens"]) == 8

    tests = steps["device-tests"]
    files = {i.split("::")[0] for i in tests["ids"]}
    assert {"tests/test_cuda_ops.py", "tests/test_cuda_quant.py", "tests/test_cuda_model.py", "tests/test_tape.py",
            "tests/test_attention_probs.py"} <= files
    assert tests["collected"] == len(tests["ids"]) > 200
    assert not [i for i in tests["ids"] if "emulated" in i or "glue" in i]            # the harness ran them in CI
    assert "tests/test_cuda_model.py::test_greedy_generation_equal[cuda-llama]" in tests["ids"]

    rows = {r["engine"]: r for r in steps["speed"]["rows"]}
    assert set(rows) == {"minilm bf16", "minilm q4_0 (fast)", "minilm q4_0 (exact)", "torch eager bf16"}
    assert all(r["status"] == "measured" and r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for r in rows.values())
    assert rows["minilm q4_0 (exact)"]["decode_bytes"] < rows["minilm bf16"]["decode_bytes"]
    assert md.startswith("# minilm gpu-check (dry run): PASSED")
    assert "| llama | q4_0 | q4_0 |" in md and "collected" in md and "| torch eager bf16 |" in md


def test_negative_control_a_broken_kernel_fails_the_check(tmp_path, monkeypatch):
    """swiglu off by 0.1%: the comparison sees it, the run exits 1 and the report says where."""
    right, wrong = "g / (1.0f + expf(-g))", "1.001f * g / (1.0f + expf(-g))"
    source = registry.module_source

    def broken(module):
        text = source(module)
        if module == "swiglu":
            assert text.count(right) == 1, f"the text to break is no longer in swiglu.cu: {right!r}"
            text = text.replace(right, wrong)
        return text
    monkeypatch.setattr(registry, "module_source", broken)
    out = tmp_path / "report"
    assert main(["gpu-check", "--out", str(out), "--dry-run", "--steps", "versions,compare",
                 "--families", "llama", "--formats", "float32"]) == 1
    report, md = read_report(out)
    [case] = report["steps"]["compare"]["cases"]
    assert not report["passed"] and case["status"] == "failed" and case["forward_max_diff"] > 10 * LOGIT_TOLERANCE
    assert "forward logits differ by" in case["problems"][0]
    assert md.startswith("# minilm gpu-check (dry run): FAILED") and "| compare | failed |" in md


def test_a_step_that_raises_fails_the_run_and_the_report_names_the_error(tmp_path, monkeypatch):
    def crash(*args):
        raise RuntimeError("the device fell off the bus")
    monkeypatch.setattr("minilm.gpu_check.compare.run_compare", crash)
    out = tmp_path / "report"
    assert main(["gpu-check", "--out", str(out), "--dry-run", "--steps", "compare,versions"]) == 1
    report, md = read_report(out)
    assert list(report["steps"]) == ["compare", "versions"] and report["steps"]["versions"]["status"] == "passed"
    assert report["steps"]["compare"]["error"] == "RuntimeError: the device fell off the bus"
    assert "in crash" in report["steps"]["compare"]["traceback"]
    assert "## compare: failed\n\nerror: RuntimeError: the device fell off the bus" in md


DEVICE_TESTS = '''
import pytest
from minilm.cuda import gpu_available   # what marks a file of CUDA tests

@pytest.mark.parametrize("backend", ["cuda-emulated", "cuda"])
def test_right(backend):
    pass

@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_wrong_on_the_device(backend):
    assert backend != "cuda", "the device computed something else"

def test_not_on_the_device():
    pass
'''


def test_a_failing_device_test_fails_the_step(tmp_path):
    """The pytest step without a GPU: its plugin keeps the "cuda" cases only, and one failure fails it."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_device.py").write_text(textwrap.dedent(DEVICE_TESTS))
    (tests / "test_other.py").write_text("def test_elsewhere():\n    pass\n")       # asks no gpu_available
    result = run_device_tests(str(tests), str(tmp_path), dry_run=False, timeout=120, log=print)
    assert result["files"] == ["tests/test_device.py"]
    assert (result["status"], result["tests"], result["passed"], result["failures"]) == ("failed", 2, 1, 1)
    assert result["failing"] == ["tests.test_device::test_wrong_on_the_device[cuda]"]


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_real_check_stops_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minilm.gpu_check", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "minilm: error: gpu-check: no GPU found (CuPy sees no CUDA device); --dry-run runs the same sequence on the "
        "CPU harness"]
    assert not (tmp_path / "r").exists()


def test_fetch_wheels_refuses_a_folder_that_holds_wheels(tmp_path):
    (tmp_path / "old-1.0-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{tmp_path} already holds wheels"):
        fetch_wheels(str(tmp_path))
