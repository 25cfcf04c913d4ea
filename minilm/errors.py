"""The errors minilm raises for bad input, in one place, and the small checks that raise them.

Every message names what is wrong (file, key, tensor, argument) on one line;
the CLI prints it as `minilm: error: ...` with exit status 2.
"""
from __future__ import annotations


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
