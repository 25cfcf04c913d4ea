"""Stopping a forward at a tape name (stop_at=, on_record=) and comparing with transformers there
(minilm.parity.Reference): docs/debugging.md.

The pdb sessions are real: a child process reads debugger commands from stdin.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minilm
from minilm.cuda import gpu_available
from minilm.models.debugging import tape_names
from minilm.parity import Reference, reference_value, transformers_tape
from conftest import random_ids

SCRIPT = """
import sys
import numpy as np
import minilm
model = minilm.load(sys.argv[1], backend=sys.argv[2], progress=False)
ids = np.array([[5, 6, 7, 8, 9]])
out = model(ids, stop_at=sys.argv[3])
print("finished", out.logits.shape)
"""


def pdb_session(folder, commands: list[str], name: str, backend: str = "numpy", env=None) -> str:
    """Run SCRIPT in a child process stopping at `name`; feed `commands` to its debugger; return what it printed."""
    result = subprocess.run([sys.executable, "-c", SCRIPT, folder, backend, name], input="\n".join(commands) + "\n",
                            capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_scripted_pdb_session_stops_at_the_name_in_the_model_code(tiny_model):
    _, folder = tiny_model("llama")
    out = pdb_session(folder, ["p q.shape", "p k.shape, x.shape, i", "p __name__, sys._getframe().f_code.co_name",
                               "c"], "layers.1.attn.q_rope")
    assert "minilm: stopped at layers.1.attn.q_rope [1, 5, 4, 16] float32, computed in self_attention()" in out
    assert "self_attention()\n-> self.record(ctx, f\"layers.{i}.attn.k_rope\", k)" in out   # the next line
    assert "(Pdb) (1, 5, 4, 16)" in out                       # q: B, T, H, HD
    assert "(Pdb) ((1, 5, 2, 16), (1, 5, 64), 1)" in out      # k (KV heads), the normed input x, the layer
    assert out.rstrip().endswith("finished (1, 5, 256)")      # `c` finishes the forward


def test_scripted_pdb_session_compares_with_transformers(tiny_model):
    """Stopped at a name, a learner prints transformers' value at the same name and the difference."""
    _, folder = tiny_model("cohere2")
    out = pdb_session(folder, ["from minilm.parity import Reference", "ref = Reference(self.path)",
                               "theirs = ref.at('layers.2.mlp.act', ctx.input_ids)",
                               "p theirs.shape, act.shape", "p float(abs(act - theirs).max()) < 1e-5", "c"],
                      "layers.2.mlp.act")
    assert "computed in mlp()" in out
    assert "(Pdb) ((1, 5, 128), (1, 5, 128))" in out
    assert "(Pdb) True" in out


@pytest.fixture
def stops(monkeypatch):
    """pdb replaced by a recorder of where it would open: (function name, its locals at that moment)."""
    import pdb
    frames = []
    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)
    monkeypatch.setattr(pdb.Pdb, "set_trace", lambda self, frame: frames.append((frame.f_code.co_name,
                                                                                 dict(frame.f_locals))))
    return frames


@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda-emulated"] + (["cuda"] if gpu_available() else []))
def test_stop_on_every_backend(tiny_model, stops, backend):
    _, folder = tiny_model("cohere", use_qk_norm=True)
    model = minilm.load(folder, backend=backend, progress=False)
    model(random_ids(2, 5), stop_at="layers.1.attn.k_norm")
    ((function, local),) = stops
    assert function == "self_attention" and local["i"] == 1
    k = model.backend.to_numpy(local["k"])
    assert k.shape == (2, 5, 2, 16)
    np.testing.assert_allclose(np.linalg.norm(k - k.mean(-1, keepdims=True), axis=-1).mean(), 4.0, rtol=0.5)


@pytest.mark.parametrize("name,function,local", [("embed", "__call__", "ids"), ("layers.0.attn.probs",
                         "self_attention", "probs"), ("layers.1.mlp.act", "mlp", "act"),
                         ("layers.1.attn_norm", "decoder_layer", "normed"), ("logits", "_head", "logits")])
def test_the_frame_is_where_the_value_was_computed(tiny_model, stops, name, function, local):
    _, folder = tiny_model("llama")
    model = minilm.load(folder, backend="numpy", progress=False)
    ids = random_ids(1, 4)
    tape = model(ids, tape=True).tape
    model(ids, stop_at=name)
    ((stopped_in, local_values),) = stops
    assert stopped_in == function
    np.testing.assert_array_equal(np.asarray(local_values[local]), tape[name] if local != "ids" else ids)


def test_stops_again_at_every_decode_step(tiny_model, stops):
    _, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    cache = model.new_cache(1)
    for step in ([[5, 6, 7]], [[8]], [[9]]):
        model(step, cache=cache, stop_at="layers.3.attn.probs")
    assert [local["probs"].shape for _, local in stops] == [(1, 4, 3, 3), (1, 4, 1, 4), (1, 4, 1, 5)]


def test_another_debugger_gets_a_plain_breakpoint_call(tiny_model, monkeypatch, stops):
    """Another debugger's hook (ipdb, ...): a plain breakpoint() call, two frames above the model code."""
    _, folder = tiny_model("llama")
    model = minilm.load(folder, backend="numpy", progress=False)
    called = []
    monkeypatch.setattr(sys, "breakpointhook", lambda: called.append(sys._getframe(1)))
    model(random_ids(1, 4), stop_at="layers.0.attn.v")
    assert not stops and len(called) == 1
    frame = called[0]
    assert frame.f_code.co_name == "stop" and frame.f_locals["value"].shape == (1, 4, 2, 16)
    assert frame.f_back.f_back.f_code.co_name == "self_attention"        # `up` twice


def test_vscode_and_pycharm_get_the_model_frame(tiny_model, monkeypatch, stops):
    """pydevd's hook (debugpy, PyCharm) takes stop_at_frame: it is handed self_attention's frame.
    A stand-in with pydevd's name and signature; a live VS Code session is not part of the suite."""
    _, folder = tiny_model("llama")
    model = minilm.load(folder, backend="numpy", progress=False)
    received = []

    def pydevd_breakpointhook(*args, **kwargs):
        received.append((kwargs["stop_at_frame"].f_code.co_name, dict(kwargs["stop_at_frame"].f_locals)))
    monkeypatch.setattr(sys, "breakpointhook", pydevd_breakpointhook)
    model(random_ids(1, 4), stop_at="layers.1.attn.q")
    ((function, local),) = received
    assert not stops and function == "self_attention" and local["q"].shape == (1, 4, 4, 16)


def test_pythonbreakpoint_0_turns_stopping_off(tiny_model, monkeypatch, stops, capsys):
    _, folder = tiny_model("llama")
    model = minilm.load(folder, backend="numpy", progress=False)
    monkeypatch.setenv("PYTHONBREAKPOINT", "0")
    model(random_ids(1, 4), stop_at="layers.0.attn.v")
    assert not stops and "stopped" not in capsys.readouterr().out


def test_unknown_names_list_close_matches(tiny_model):
    _, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    with pytest.raises(ValueError, match=r"stop_at='layers\.1\.attn\.qrope' is not recorded by this cohere2 model "
                                         r"\(4 layers\); close matches: layers\.1\.attn\.q_rope"):
        model([[5, 6]], stop_at="layers.1.attn.qrope")
    with pytest.raises(ValueError, match=r"layers\.3 records attn_norm, attn\.q, attn\.k, attn\.v, attn\.mask, "):
        model([[5, 6]], stop_at="layers.3.attn.q_rope")               # the global layer has no RoPE
    with pytest.raises(ValueError, match="names look like"):
        model([[5, 6]], stop_at="nothing like it")


def test_on_record_sees_every_tape_name_in_order(tiny_model):
    _, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numba", progress=False)
    seen = []
    out = model(random_ids(1, 5), tape=True, on_record=lambda name, value: seen.append((name, value.shape)))
    assert seen == [(name, value.shape) for name, value in out.tape.items()]
    assert [name for name, _ in seen] == tape_names(model)


def test_reference_matches_the_tape_and_explains_unknown_names(tiny_model):
    import torch
    hf, folder = tiny_model("llama")
    model = minilm.load(folder, backend="numpy", progress=False)
    ids = random_ids(1, 6)
    tape = model(ids, tape=True).tape
    ref = Reference(hf)
    for name in ("layers.0.attn.q_rope", "layers.1.attn.probs", "layers.1.mlp.act", "logits"):
        assert np.abs(ref.at(name, ids) - tape[name]).max() < 1e-4, name
    with torch.no_grad(), transformers_tape(hf) as direct:
        hf(torch.as_tensor(ids))
    np.testing.assert_array_equal(ref.at("layers.1.out", ids), direct["layers.1.out"])
    np.testing.assert_array_equal(reference_value(folder, ids, "layers.1.out"), direct["layers.1.out"])
    with pytest.raises(KeyError, match="close matches: layers.1.mlp.up"):
        ref.at("layers.1.mlp.upp", ids)
    # A wrong value is visibly wrong: the negative control of the comparison itself.
    assert np.abs(ref.at("layers.1.attn.k", ids) - tape["layers.1.attn.v"]).max() > 1e-2


def test_reference_runs_transformers_once_per_input(tiny_model):
    hf, _ = tiny_model("llama")
    ref, calls = Reference(hf), []
    hf.register_forward_hook(lambda *args: calls.append(1))
    ids = random_ids(1, 5)
    ref.at("layers.0.attn.q", ids), ref.at("layers.1.out", ids)
    assert len(calls) == 1
    ref.at("layers.0.attn.q", random_ids(1, 5, seed=9))
    assert len(calls) == 2


def test_finding_the_names_does_not_touch_the_callers_cache(tiny_model, stops):
    """stop_at is checked against tape_names(model), found by a one-token forward without a cache."""
    _, folder = tiny_model("cohere2")
    model = minilm.load(folder, backend="numpy", progress=False)
    cache = model.new_cache(1)
    model([[5, 6, 7]], cache=cache, stop_at="layers.0.attn.q")
    assert cache.seq_len == 3 and cache.stored_lengths() == [3, 3, 3, 3] and len(stops) == 1
    names = tape_names(model)
    assert names[0] == "embed" and names[-1] == "logits" and "layers.3.attn.q_rope" not in names
