"""The `minilm` command with hostile arguments and environments (issue 14, weak items and the CLI
side of class 3): every bad input is one line `minilm: error: ...` naming the argument or file,
exit status 2, never "internal error" and never a traceback.
"""
import os
import subprocess
import sys

import pytest

from minilm.cli import main
from minilm.testing import tiny_checkpoint
from hostile_helpers import (ROOT, assert_cli_error, assert_one_line_error, byte_level_tokenizer, run_cli,  # noqa: F401
                             time_limit)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tiny_checkpoint("llama", str(tmp_path_factory.mktemp("cli") / "m"))
    return byte_level_tokenizer(folder)


def one_line(capsys, status, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minilm: error: "), err
    assert_one_line_error(err[0], *fragments)
    assert status == 2


def test_negative_control_generate_works(model_dir, capsys):
    assert main(["generate", "hello", "--model", model_dir, "--backend", "numpy", "--max-new-tokens", "3"]) == 0


@pytest.mark.parametrize("context", ["0", "1", "-5"])
def test_perplexity_context_too_small(model_dir, tmp_path, capsys, context):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 10)
    one_line(capsys, main(["perplexity", str(text), "--model", model_dir, "--context", context]),
             f"--context={context}", "at least 2")


def test_perplexity_negative_control(model_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 10)
    assert main(["perplexity", str(text), "--model", model_dir, "--context", "2", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.startswith("perplexity ")


@pytest.mark.time_limit(20)
@pytest.mark.parametrize("make,fragment", [
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe"), "is not UTF-8 text (byte 0xff at offset 8)"),
    (lambda p: p.mkdir(), "is not a regular file"),
    (lambda p: os.mkfifo(p), "is not a regular file"),
    (lambda p: None, "does not exist"),
])
def test_perplexity_text_file(model_dir, tmp_path, capsys, make, fragment):
    path = tmp_path / "input.txt"
    make(path)
    one_line(capsys, main(["perplexity", str(path), "--model", model_dir]), "input.txt", fragment)


def test_model_that_is_a_file(model_dir, capsys):
    """The issue: `--model FILE` said "does not exist" for an existing file."""
    config = os.path.join(model_dir, "config.json")
    one_line(capsys, main(["generate", "hi", "--model", config]), "is a file, not a checkpoint folder")


@pytest.mark.time_limit(20)
@pytest.mark.parametrize("args,fragment", [
    (["--length", "100000"], "--length=100000 must be an integer from 1 to 1024"),   # the example
    (["--length", "0"], "--length=0"),
    (["--length", "1025"], "--length=1025"),
    (["--pad", "1000000000", "--prompt", "hi"], "--pad=1000000000"),
    (["--pad", "-1"], "--pad=-1"),
])
def test_masks_sizes_are_bounded(model_dir, capsys, args, fragment):
    one_line(capsys, main(["masks", "--model", model_dir, *args]), fragment)


@pytest.mark.time_limit(60)
def test_masks_at_the_limit_in_bounded_memory(tmp_path):
    """The largest picture allowed, for a 4-layer Cohere2, fits in 1.5 GiB (layers share pictures)."""
    folder = tiny_checkpoint("cohere2", str(tmp_path / "c2"))
    result = run_cli("masks", "--model", folder, "--length", "1024", memory_gb=1.5, timeout=50)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.count("\n") > 2 * 1024


def test_masks_share_one_picture_per_rule(tmp_path):
    from minilm.masks import mask_pictures
    pictures = mask_pictures(tiny_checkpoint("cohere2", str(tmp_path / "c2")), length=16)
    assert pictures[0] is pictures[1] and pictures[0] is not pictures[3]       # S S S F
    assert not pictures[0].flags.writeable


def test_backend_cuda_without_cupy(model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)           # `import cupy` raises ImportError
    status = main(["generate", "hi", "--model", model_dir, "--backend", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("minilm: error: "), err


def test_backend_cuda_without_a_gpu(model_dir, capsys):
    from minilm.cuda.backend import gpu_available
    if gpu_available():
        pytest.skip("this machine has a GPU")
    one_line(capsys, main(["generate", "hi", "--model", model_dir, "--backend", "cuda"]), "no GPU found")


def shell(command: str, model_dir: str) -> subprocess.CompletedProcess:
    """Run `minilm` from a shell that closes some standard streams (`>&-`, `<&-`, `2>&-`)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "MODEL": model_dir, "PY": sys.executable}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=200)


@pytest.mark.time_limit(250)
def test_closed_standard_streams(model_dir):
    generate = '"$PY" -m minilm.cli generate hello --model "$MODEL" --backend numpy --max-new-tokens 2'
    # stdout closed: the answer cannot be delivered, and minilm says so on stderr.
    result = shell(generate + " >&-", model_dir)
    assert_cli_error(result, "standard output is closed")
    # stderr closed: the answer still comes out, progress bars and errors go nowhere.
    result = shell(generate + " 2>&-", model_dir)
    assert result.returncode == 0 and result.stdout.strip() != ""
    result = shell('"$PY" -m minilm.cli generate hi --model /no/such 2>&-', model_dir)
    assert result.returncode == 2
    # stdin closed: chat reads end of input and exits normally.
    result = shell('"$PY" -m minilm.cli chat --model "$MODEL" --backend numpy <&-', model_dir)
    assert result.returncode == 0, result.stderr[-1000:]
    assert "Traceback" not in result.stderr
