"""The errors minilm raises for bad input, in one place, and the small checks that raise them.

Every message names what is wrong (file, key, tensor, argument) on one line;
the CLI prints it as `minilm: error: ...` with exit status 2.

Files are opened only if they are regular files (a FIFO would block forever, a
device could be endless) and JSON files are read only up to MAX_JSON_BYTES,
so a hostile folder costs bounded time and memory before it is refused.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import stat

MAX_JSON_BYTES = 64 * 1024 * 1024     # config.json, tokenizer_config.json, index and marker files


class ConfigError(ValueError):
    """A config.json that minilm cannot run: names the key and the value."""


class WeightsError(ValueError):
    """A checkpoint file that cannot be loaded: names the file and the tensor."""


class UnsupportedFormatError(ValueError):
    """A weight format a backend (or a tensor's shape) cannot use: names both."""


def check_positive_int(cfg: dict, key: str, source: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{source}: {key}={value!r} must be a positive integer")
    return value


def is_number(value) -> bool:
    """An int or float that is finite (JSON's true/false are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_rust_panic(error: BaseException) -> bool:
    """tokenizers reports a Rust panic as pyo3_runtime.PanicException, which derives from
    BaseException (not Exception), so no ordinary `except` catches it."""
    return type(error).__name__ == "PanicException" and type(error).__module__ == "pyo3_runtime"


# ---------------------------------------------------------------------- files


def regular_file_size(path: str, what: str, error: type = WeightsError) -> int:
    """Size of `path`, refusing anything that is not a regular file (directories, FIFOs, devices)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
    _check_regular(info, path, what, error)
    return info.st_size


def open_regular_file(path: str, what: str, error: type = WeightsError):
    """`path` opened for binary reading; the check is made on the open file, so a FIFO swapped in
    after a stat() can neither pass nor block (it is opened non-blocking)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as e:
        raise error(f"{path}: cannot open {what} ({e.strerror})") from None
    try:
        _check_regular(os.fstat(fd), path, what, error)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(info: os.stat_result, path: str, what: str, error: type) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise error(f"{path}: {what} is {kind}")


def load_json_file(path: str, what: str, error: type, max_bytes: int = MAX_JSON_BYTES, expect: type = dict):
    """The JSON value in `path` (a regular file of at most max_bytes, valid UTF-8 JSON of type
    `expect`), or `error` naming the file: never a hang, a RecursionError or a raw decode error."""
    with open_regular_file(path, what, error) as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise error(f"{path}: {what} is larger than {max_bytes} bytes")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError, and the int-digits limit of huge numbers
        raise error(f"{path}: {what} is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise error(f"{path}: {what} is nested too deeply") from None
    if expect is not None and not isinstance(value, expect):
        raise error(f"{path}: {what} must hold a JSON {'object' if expect is dict else expect.__name__}, "
                    f"got {type(value).__name__}")
    return value


def write_text_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a hidden sibling renamed over it: a full disk or a kill leaves the
    earlier file whole (never a truncated one), and the sibling is removed on failure."""
    parent, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(partial, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from None          # name the file asked for
        raise
