"""Optional dependencies: which pip extra a feature needs, and a one-line error when it is missing.

    require_extra(("torch", "transformers"), "parity", "minilm parity")
    # MissingExtraError: minilm parity needs the [parity] extra: pip install -e ".[parity]"

The base install (numpy, numba, safetensors, tokenizers, ...) runs generate, chat,
convert, perplexity and masks; the extras in pyproject.toml add the rest:

    parity      torch + transformers: minilm parity, bench's transformers column, the parity tests
    notebooks   jupyter, jupytext, matplotlib: the notebooks, masks --png
    cuda        CuPy + the CUDA NVRTC/runtime headers: backend="cuda" and "cuda-emulated"
    test        all of the above + pytest, hypothesis
"""
from __future__ import annotations

import importlib.util


class MissingExtraError(ImportError):
    """A feature whose optional dependencies are not installed; the message names the extra."""


def missing_modules(modules: str | tuple[str, ...]) -> list[str]:
    """The top-level modules of `modules` that cannot be imported (found without importing them)."""
    names = (modules,) if isinstance(modules, str) else tuple(modules)
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_extra(modules: str | tuple[str, ...], extra: str, command: str) -> None:
    """Raise MissingExtraError naming `extra` if any of `modules` is not installed.

    command: what needs it, as the user typed it ("minilm parity", "backend='cuda'").
    """
    if missing_modules(modules):
        raise MissingExtraError(f'{command} needs the [{extra}] extra: pip install -e ".[{extra}]"')
