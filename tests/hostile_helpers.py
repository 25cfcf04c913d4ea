"""Shared by the tests/test_hostile_*.py files: bounds on time and memory, so that a
regression fails instead of hanging or swapping CI, and small builders of bad inputs."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TookTooLong(Exception):
    pass


@pytest.fixture(autouse=True)
def time_limit(request):
    """Every hostile test gets 120 s of wall clock (SIGALRM, main thread); `@pytest.mark.time_limit(s)`
    tightens it. A hang (a FIFO opened, an endless loop) then fails the test."""
    marker = request.node.get_closest_marker("time_limit")
    seconds = marker.args[0] if marker else 120

    def expire(signum, frame):
        raise TookTooLong(f"{request.node.name} ran longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_python(code: str, memory_gb: float = 2.0, timeout: float = 120, env: dict | None = None,
               file_size: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -c code` in a child with an address-space limit (a regression that allocates
    gigabytes dies with MemoryError instead of swapping the machine) and a timeout."""
    def limits():
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    child_env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                 "NUMBA_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limits, env=child_env, **kwargs)


def run_cli(*args, memory_gb: float = 3.0, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m minilm.cli ...` under the same limits."""
    code = f"import sys; from minilm.cli import main; sys.exit(main({list(map(str, args))!r}))"
    return run_python(code, memory_gb=memory_gb, timeout=timeout, **kwargs)


def assert_one_line_error(message: str, *fragments: str) -> None:
    """A user-facing error: one line, naming what is wrong."""
    assert "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def assert_cli_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2 and a last stderr line `minilm: error: ...` naming the fragments, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert lines and lines[-1].startswith("minilm: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
    assert_one_line_error(lines[-1], *fragments)
    return lines[-1]


def write_json(path, value) -> str:
    with open(path, "w") as f:
        json.dump(value, f)
    return str(path)


def write_safetensors_raw(path, header, data: bytes = b"") -> str:
    """A safetensors file from a header (dict, or raw bytes written as they are) and data bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)
    return str(path)


def byte_level_tokenizer(folder, chat_template: str | None = "{% for m in messages %}{{ m.content }}{% endfor %}",
                         pre_tokenizer=None) -> str:
    """A 256-token byte-level tokenizer (matching the tiny configs' vocab_size=256) in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from minilm.convert import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    config = {"eos_token": bytes_to_unicode()[2]}
    if chat_template is not None:
        config["chat_template"] = chat_template
    write_json(os.path.join(folder, "tokenizer_config.json"), config)
    return str(folder)
