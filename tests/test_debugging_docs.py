"""docs/debugging.md stays true: its pdb sessions are re-run, its shape table is a real tape of
SmolLM2, its gdb session steps one CUDA thread, and .vscode/launch.json parses and points at real
files, modules and tape names.

A session in the page is a fenced block after `<!-- session: ENV... python SCRIPT ARGS -->`; the
lines starting with `(Pdb) ` are fed to the script's debugger, and every other line of the block
must be what the debugger printed (paths made relative, source line numbers ignored, `...` skips
lines). To refresh a session after a change, print `transcript(...)` and paste it.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minilm

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "debugging.md").read_text()
SESSION = re.compile(r"<!-- session: (.+?) -->\n```text\n(.*?)```", re.S)


def sessions() -> list[tuple[str, str]]:
    return SESSION.findall(DOC)


def transcript(command: str, commands: list[str]) -> str:
    """Run `ENV=... python script args` from the repository root, feeding `commands` to its debugger;
    return what a terminal shows: output with each command after its (Pdb) prompt."""
    words = shlex.split(command)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "python"
    result = subprocess.run([sys.executable, *words[1:]], input="\n".join(commands) + "\n", cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    chunks = result.stdout.split("(Pdb) ")
    out = chunks[0]
    for command, response in zip(commands, chunks[1:]):
        out += f"(Pdb) {command}\n{response}"
    return out


def normalise(text: str) -> list[str]:
    text = text.replace(str(ROOT) + "/", "")
    text = re.sub(r"\.py\((\d+)\)", ".py(N)", text)             # pdb's > file.py(177)function()
    text = re.sub(r"\.py:(\d+)\)", ".py:N)", text)              # minilm's header: (base.py:176)
    text = re.sub(r"^(\d+)(\s+->?\s)", r"N\2", text, flags=re.M)  # `ll` listings
    return [line.rstrip() for line in text.strip().splitlines()]


def assert_matches(expected: list[str], actual: list[str]) -> None:
    """actual equals expected line by line, from the start; a `...` line in expected stands for any lines."""
    position, skipping = 0, False
    for line in expected:
        if line == "...":
            skipping = True
            continue
        while skipping and position < len(actual) and actual[position] != line:
            position += 1
        if position >= len(actual) or actual[position] != line:
            got = actual[position] if position < len(actual) else "(end of output)"
            raise AssertionError(f"expected {line!r}, got {got!r}; the output was:\n" + "\n".join(actual))
        position, skipping = position + 1, False


def test_the_comparison_can_fail():
    assert_matches(["a", "...", "d"], ["a", "b", "c", "d"])
    for expected in (["a", "c"], ["a", "...", "e"], ["b"]):
        with pytest.raises(AssertionError):
            assert_matches(expected, ["a", "b", "c", "d"])


def test_the_page_has_its_sessions():
    commands = [command for command, _ in sessions()]
    assert "python docs/debugging/stop_at.py" in commands
    assert "NUMBA_DISABLE_JIT=1 python docs/debugging/numba_kernel.py" in commands
    assert {f"python docs/debugging/planted_bugs.py {f}" for f in ("llama", "cohere", "cohere2")} <= set(commands)


@pytest.mark.parametrize("index", range(len(SESSION.findall(DOC))),
                         ids=[c.split("debugging/")[-1] for c, _ in SESSION.findall(DOC)])
def test_session_in_the_page_is_what_the_debugger_prints(index, smollm2_dir):
    command, block = sessions()[index]
    lines = block.strip().splitlines()
    assert lines[0] == f"$ {command}"
    commands = [line[len("(Pdb) "):] for line in lines if line.startswith("(Pdb) ")]
    assert_matches(normalise("\n".join(lines[1:])), normalise(transcript(command, commands)))


def test_shape_table_is_a_real_tape(smollm2_dir):
    from minilm.tokenizer import Tokenizer
    model = minilm.load(smollm2_dir, backend="numba", progress=False)
    ids = np.array([Tokenizer.from_pretrained(smollm2_dir).encode("The capital of France is")])
    tape = model(ids, tape=True).tape
    rows = re.findall(r"^\| `([\w.{}]+)` \| \[([\d, ]+)\] (\w+) \|", DOC, flags=re.M)
    assert len(rows) >= 19
    for name, shape, dtype in rows:
        value = tape[name.replace("{i}", "3")]
        assert list(value.shape) == [int(s) for s in shape.split(",")] and value.dtype.name == dtype, name


def launch_configurations() -> list[dict]:
    text = (ROOT / ".vscode" / "launch.json").read_text()
    without_comments = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    return json.loads(without_comments)["configurations"]


def test_launch_configurations_parse_and_point_at_real_things(smollm2_dir):
    from importlib.util import find_spec
    from minilm.models.debugging import tape_names
    configurations = launch_configurations()
    names = tape_names(minilm.load(smollm2_dir, backend="numba", progress=False))
    assert len(configurations) >= 6
    kinds = set()
    for config in configurations:
        assert {"name", "type", "request"} <= set(config), config
        if config["type"] == "debugpy":
            if "program" in config:
                path = Path(config["program"].replace("${workspaceFolder}", str(ROOT)))
                assert path.is_file(), path
                kinds.add(path.stem)
                if path.stem in ("stop_at", "compare"):
                    assert config["args"][0] in names, config["args"]
            else:
                assert find_spec(config["module"]) is not None, config["module"]
                kinds.add(config["args"][0])
            assert config["env"]["PYTHONPATH"] == "${workspaceFolder}"
        else:
            assert config["type"] == "cppdbg" and config["MIMode"] == "gdb"
            assert config["program"] == "${command:python.interpreterPath}"
            assert Path(config["args"][0].replace("${workspaceFolder}", str(ROOT))).is_file()
            kinds.add("gdb")
    assert {"stop_at", "compare", "numba_kernel", "parity", "planted_bugs", "gdb"} <= kinds
    numba_config = next(c for c in configurations if c.get("program", "").endswith("numba_kernel.py"))
    assert numba_config["env"]["NUMBA_DISABLE_JIT"] == "1"


def test_launch_json_comment_stripping_is_not_hiding_a_broken_file():
    with pytest.raises(json.JSONDecodeError):
        json.loads((ROOT / ".vscode" / "launch.json").read_text())            # comments: not plain JSON


# --- a CUDA kernel in gdb ----------------------------------------------------------

def kernel_line(marker: str) -> int:
    lines = (ROOT / "kernels" / "attention.cu").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if marker in line)


GDB = shutil.which("gdb")


def test_the_page_names_the_real_kernel_line():
    line = kernel_line("const float sum = block_sum(local_sum, scratch);")
    assert f"attention.cu:{line} if" in DOC
    assert f"attention.cu:{line} if" in (ROOT / "docs" / "debugging" / "cuda_kernel.py").read_text()


@pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install gdb)")
def test_gdb_stops_one_thread_of_one_block_of_a_cuda_kernel():
    """attention_probs on the CPU harness, debug build: block (1, 2, 0) = head 1, query 2; thread 0."""
    line = kernel_line("const float sum = block_sum(local_sum, scratch);")
    condition = ("::harness::tls_worker->block_idx.x == 1 && ::harness::tls_worker->block_idx.y == 2 "
                 "&& ::harness::tls_worker->current->thread_idx.x == 0")
    commands = ["set breakpoint pending on", "set language c++", f"break attention.cu:{line} if {condition}", "run",
                "print ::harness::tls_worker->block_idx", "print ::harness::current_fiber().thread_idx",
                "print local_sum", "print probs[0]@kv_len", "next", "print sum", "kill"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([GDB, "-batch", "-nx", *[a for c in commands for a in ("-ex", c)], "--args",
                             sys.executable, str(ROOT / "docs" / "debugging" / "cuda_kernel.py")],
                            capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    out = result.stdout
    assert f"hit Breakpoint 1.1, attention_probs<float>" in out, out[-3000:] + result.stderr[-2000:]
    values = dict(re.findall(r"^\$(\d+) = (.*)$", out, flags=re.M))
    assert values["1"] == "{x = 1, y = 2, z = 0}" and values["2"] == "{x = 0, y = 0, z = 0}"
    # What thread 0 holds: its key's softmax numerator, then the block-wide sum, as NumPy computes them.
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 3, 2, 8)).astype(np.float32)
    k = rng.standard_normal((1, 3, 1, 8)).astype(np.float32)
    scores = (k[0, :, 0] @ q[0, 2, 1]) * np.float32(8 ** -0.5)                   # query 2 sees keys 0..2
    numerators = np.exp(scores - scores.max())
    assert float(values["3"]) == pytest.approx(numerators[0], rel=1e-6)
    assert [float(v) for v in values["4"].strip("{}").split(",")] == pytest.approx(numerators, rel=1e-6)
    assert float(values["5"]) == pytest.approx(numerators.sum(), rel=1e-6)
