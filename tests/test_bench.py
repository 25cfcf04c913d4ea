"""`minilm bench` runs end to end on a tiny model and reports every column (speed is never asserted)."""
import functools
import json

import pytest

import numba  # noqa: F401

from minilm import bench, cli  # noqa: E402


def test_bench_reports_every_backend(tiny_model, tmp_path, capsys, monkeypatch):
    _, folder = tiny_model("llama", max_position_embeddings=64)
    out = tmp_path / "report.json"
    args = cli.build_parser().parse_args(
        ["bench", "--model", folder, "--backends", "numpy,numba,numba-bf16,transformers", "--prompt-tokens", "5",
         "--new-tokens", "3", "--prefill-tokens", "12", "--repeats", "1", "--json", str(out)])
    monkeypatch.setattr(bench, "run_bench", functools.partial(bench.run_bench, bandwidth_gib=0.0625))
    assert args.func(args) == 0
    table = capsys.readouterr().out
    for name in ("numpy", "numba-bf16", "transformers", "second-process start to first token"):
        assert name in table
    report = json.loads(out.read_text())
    results = {r["backend"]: r for r in report["results"]}
    assert set(results) == {"numpy", "numba", "numba-bf16", "transformers"}
    assert report["bandwidth"]["bandwidth_gb_s"] > 0 and set(report["startup_s"]) == {"float32", "bfloat16"}
    assert results["numba-bf16"]["weight_bytes"] < results["numba"]["weight_bytes"]
    for r in results.values():
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_rss"] > 0 and len(r["tokens"]) == 4
    assert results["numpy"]["max_logit_diff_vs_fp32"] < 1e-4
    assert results["transformers"]["max_logit_diff_vs_fp32"] < 1e-4
    assert results["numba"]["same_tokens_as_hf"]          # greedy tokens agree with transformers
    assert len(results["numba"]["pct_bandwidth_runs"]) == 1 and results["numba"]["pct_bandwidth"] > 0
    assert 0 < results["numba"]["generate_peak_private"] < results["numba"]["peak_rss"]
    assert report["bf16_checkpoint_error"] < 1e-4        # bf16 storage = float32 path on the same weights


def test_bench_rejects_unknown_backend(tiny_model):
    with pytest.raises(ValueError, match="unknown benchmark backend"):
        bench.run_bench("unused", backends=("numba", "tensorflow"), log=lambda m: None)
