"""The pytest plugin of `minilm gpu-check` (pytest -p minilm.gpu_check.pytest_plugin): only the tests
that run on the device.

A test runs on the device when
  * one of its parameters (or a fixture's) is the backend name "cuda", or a tuple naming it;
  * or its own body asks gpu_available() (a loop over backends that adds "cuda" on a GPU).
Everything else is deselected. With $MINILM_GPU_CHECK_COLLECT_AS_IF_GPU set (a dry run) it only
lists them: gpu_available() answers True during collection, so the tests that add "cuda" at
import are listed too, and running them is refused.
"""
from __future__ import annotations

import inspect
import os

COLLECT_AS_IF_GPU = "MINILM_GPU_CHECK_COLLECT_AS_IF_GPU"


def pytest_configure(config):
    if not os.environ.get(COLLECT_AS_IF_GPU):
        return
    if not config.option.collectonly:
        import pytest
        raise pytest.UsageError(f"{COLLECT_AS_IF_GPU} only lists the device tests (--collect-only): "
                                "without a GPU they cannot run")
    import minilm.cuda
    import minilm.cuda.backend
    minilm.cuda.gpu_available = minilm.cuda.backend.gpu_available = lambda: True


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if runs_on_device(item)]
    dropped = [item for item in items if not runs_on_device(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def runs_on_device(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(_names_cuda(value) for value in params.values()):
        return True
    function = getattr(item, "function", None)
    if function is None:
        return False
    body = [line for line in inspect.getsource(function).splitlines() if not line.lstrip().startswith("@")]
    return any("gpu_available()" in line for line in body)


def _names_cuda(value) -> bool:
    return (isinstance(value, str) and value == "cuda") or (isinstance(value, tuple) and "cuda" in value)
