"""`minilm bench` runs end to end on tiny models and reports every column it promises; speed is
never asserted (docs/benchmarks.md holds the measured results)."""
import json
import os

import numpy as np
import pytest

import numba  # noqa: F401

from minilm import bench, cli  # noqa: E402
from minilm.bench import busy, quality  # noqa: E402
from minilm.bench.engines import parse_spec  # noqa: E402
from minilm.testing import random_checkpoint, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama as a float32 checkpoint and as a Q4_1 GGUF."""
    root = tmp_path_factory.mktemp("bench")
    config = tiny_config("llama", max_position_embeddings=256)
    return random_checkpoint(config, root / "float32"), random_checkpoint(config, root / "gguf", dtype="q4_1")


def test_bench_reports_every_backend(tiny, tmp_path, capsys):
    folder, gguf = tiny
    out = tmp_path / "report.json"
    args = cli.build_parser().parse_args(
        ["bench", "--model", folder, "--gguf", gguf, "--backends", "numpy,numba,numba-bf16,numba-q8_0,numba-int4,"
         "numba-gguf,numba-gguf-exact,transformers", "--prompt-tokens", "5", "--new-tokens", "3",
         "--prefill-tokens", "20", "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "estimated" in captured.err and "decode run 1/1" in captured.err       # an estimate, then progress
    for name in ("numba-gguf-exact", "vs transformers", "load average before", "KV cache / token",
                 "minilm fast kernels: ", "1 threads"):
        assert name in captured.out
    assert "nan" not in captured.out
    report = json.loads(out.read_text())
    results = {r["backend"]: r for r in report["results"]}
    assert set(results) == {"numpy", "numba", "numba-bf16", "numba-q8_0", "numba-int4", "numba-gguf",
                            "numba-gguf-exact", "transformers"}
    for r in results.values():
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"]["20"] > 0 and r["load_warm_s"] > 0
        assert r["generate_peak_rss"] > 0 and r["kv_bytes_per_token"] > 0 and len(r["tokens"]) == 4
    assert results["numba"]["same_tokens"] and results["numba"]["max_logit_diff"] < 1e-4   # vs transformers
    assert results["numba-gguf"]["weight_bytes"] < results["numba-bf16"]["weight_bytes"] < \
        results["numba"]["weight_bytes"]
    assert "q4_1/fast" in results["numba-gguf"]["description"]
    assert "q4_1/exact" in results["numba-gguf-exact"]["description"]
    assert results["transformers"]["description"].endswith(", 1 threads")        # --threads reached torch
    assert report["machine"]["numba_threads"] == 1 and report["machine"]["kernel_path"]
    for r in results.values():                                                      # read around each child
        assert len(r["load_average_before"]) == 3 and len(r["load_average_after"]) == 3


def test_machine_names_the_cpu_its_flags_and_the_kernel_path():
    from minilm.ops.numba_simd import SIMD_LEVEL
    m = bench.machine()
    line = bench.machine_line(m)
    assert m["kernel_path"] == SIMD_LEVEL and f"minilm fast kernels: {SIMD_LEVEL}" in line
    if os.path.exists("/proc/cpuinfo"):
        assert m["cpu"] != "unknown CPU" and m["cpu"] in line
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith(("flags", "Features"))).split(":")[1].split())
        assert set(m["isa"]) == flags & set(bench.ISA_FLAGS)


def test_a_crashing_llama_cpp_is_measured_again_one_token_per_batch(monkeypatch):
    """llama-cpp-python 0.3.36 died with SIGSEGV evaluating a 16-token batch on an AMX Xeon: the bench
    names the signal in one line and measures it again with batches of one token."""
    from minilm.bench import runner
    calls = []

    def fake_child(command, payload, log, threads):
        calls.append(payload.get("llama_batch"))
        if payload.get("llama_batch") is None:
            raise runner.ChildDied("benchmark child measure was killed by SIGSEGV\nstack")
        return {"description": "llama.cpp 0.3.36, 2 threads, f16 KV cache, one token per batch"}
    monkeypatch.setattr(bench, "run_child", fake_child)
    r = bench.measure_in_child(parse_spec("llama.cpp"), {}, lambda m: None, None)
    assert calls == [None, 1] and r["description"].endswith("(batches of 512 crashed: SIGSEGV)")
    with pytest.raises(runner.ChildDied):                                          # minilm's own crash: no retry
        bench.measure_in_child(parse_spec("numba"), {}, lambda m: None, None)


def test_a_child_killed_by_a_signal_is_reported_in_one_line(tmp_path, monkeypatch):
    import sys
    from minilm.bench import runner
    script = tmp_path / "die.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    real_popen = runner.subprocess.Popen
    monkeypatch.setattr(runner.subprocess, "Popen", lambda argv, **kw: real_popen([sys.executable, str(script)], **kw))
    with pytest.raises(runner.ChildDied, match="killed by SIGSEGV"):
        runner.run_child("measure", {}, log=lambda m: None)


def test_unavailable_backends_are_named_not_nan(tiny, capsys, monkeypatch):
    folder, _ = tiny
    report = bench.run_bench(folder, None, ("numba", "llama.cpp", "numba-gguf"), bench.QUICK, log=lambda m: None)
    assert set(report["unavailable"]) == {"llama.cpp", "numba-gguf"}
    text = bench.format_report(report)
    assert "not run: numba-gguf: no GGUF file" in text and "nan" not in text


def test_a_gguf_alone_runs_as_stored_without_a_float32_copy(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path))
    _, gguf = tiny
    model_dir, found = bench.resolve_inputs(gguf, None)
    assert found == gguf and not os.path.exists(os.path.join(model_dir, "model.safetensors"))   # config only
    report = bench.run_bench(model_dir, found, ("numba-gguf", "numba"), bench.QUICK, log=lambda m: None)
    assert [r["backend"] for r in report["results"]] == ["numba-gguf"]
    assert "no safetensors checkpoint" in report["unavailable"]["numba"]


def test_backend_names():
    assert parse_spec("numba-q4_1").quantize == "q4_1" and parse_spec("numba-q4_1").mode == "auto"
    assert parse_spec("numba-nf4-exact").mode == "exact"
    assert parse_spec("numba-gguf").source == "gguf"
    with pytest.raises(ValueError, match="unknown benchmark backend 'tensorflow'"):
        bench.run_bench("unused", None, ("numba", "tensorflow"), log=lambda m: None)


def test_busy_and_long_modes_on_a_tiny_model(tiny, capsys):
    folder, _ = tiny
    args = cli.build_parser().parse_args(["bench", "--model", folder, "--long", "32,64"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "numba: first token s" in out and "transformers: first token s" in out
    report = busy.busy_machine(folder, None, log=lambda m: None, tokens=8, repeats=1)
    text = busy.format_busy(report)
    assert "busy, default settings" in text and set(report["rows"]) == {"idle", "busy"}


def test_quality_table_on_the_real_model(smollm2_dir, monkeypatch, capsys):
    monkeypatch.setattr(bench.quality, "VARIANTS", [("float32", {}), ("q4_0 fast", {"quantize": "q4_0",
                                                                                     "mode": "fast"})])
    report = quality.quality_table(smollm2_dir, None, context=128, log=lambda m: None, max_tokens=256,
                                   decode_tokens=4)
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["float32"]["top1_agreement"] == 1.0 and rows["float32"]["max_logit_error"] == 0.0
    assert rows["float32"]["perplexity"] < rows["q4_0 fast"]["perplexity"] < 3 * rows["float32"]["perplexity"]
    assert 0.5 < rows["q4_0 fast"]["top1_agreement"] < 1.0
    assert "Declaration of Independence" in quality.format_quality(report)


def test_profile_accounts_for_every_op_of_a_step(tiny):
    import minilm
    from minilm.bench.profile import format_profile, profile_decode
    model = minilm.load(tiny[0], backend="numba", progress=False)
    profile = profile_decode(model, [[3, 4, 5, 6]], steps=4)
    layers = model.config.num_hidden_layers
    assert profile["linear"][0] == 7 * layers + 1 and profile["attention"][0] == layers
    assert abs(sum(s for op, (_, s) in profile.items() if op != "step") - profile["step"][1]) < 1e-9
    assert "whole step" in format_profile(profile, "tiny")
    assert model.backend.linear.__name__ == "linear"                  # the clocks are removed again


def test_the_roofline_reads_a_transposed_view_in_place():
    """torchao's int4 scales are transposed views of the file: the roofline reads their bytes where
    they are (a copy would add the scales to the private memory the bench reports)."""
    from minilm.bench.measure import in_memory_order
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4)                     # [G, OUT] as the file holds it
    view = stored.T                                                           # [OUT, G], Fortran order
    assert np.shares_memory(in_memory_order(view), stored) and in_memory_order(view).nbytes == stored.nbytes
    strided = stored[:, ::2]                                                  # neither order: copied
    assert not np.shares_memory(in_memory_order(strided), stored)
