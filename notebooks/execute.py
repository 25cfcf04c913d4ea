"""Run notebook sources and write them as .ipynb files with their outputs.

    python notebooks/execute.py                      # every notebooks/NN_*.py
    python notebooks/execute.py notebooks/03_attention.py

Each NN_name.py (jupytext percent format) is the reviewable source; NN_name.ipynb
is written beside it, executed top to bottom in a fresh python3 kernel, so a
learner browsing the repository sees every output and plot.
tests/test_notebooks.py checks both files hold the same cells and runs the source.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))            # minilm from this checkout (cpu_key)
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def cpu_key() -> str:
    """The CPU the outputs were made on, as the kernels see it: LLVM's name for it and the fast
    kernels' instruction-set level (rounding in the last digits, and the assembly notebook 07
    prints, depend on both)."""
    from llvmlite import binding
    from minilm.ops.numba_simd import SIMD_LEVEL
    return f"{binding.get_host_cpu_name()}, kernels {SIMD_LEVEL}"


def execute(source: Path, timeout: int = 240):
    """The source as a notebook, executed in a temporary working folder; returns the notebook."""
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["minilm"] = {"cpu": cpu_key()}
    nb.metadata.pop("jupytext", None)
    with tempfile.TemporaryDirectory() as work:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": work}}).execute()
    return nb


def main(paths: list[str]) -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    sources = [Path(p) for p in paths] or sorted(HERE.glob("[0-9][0-9]_*.py"))
    for source in sources:
        print(f"executing {source.name}", flush=True)
        nbformat.write(execute(source), source.with_suffix(".ipynb"))


if __name__ == "__main__":
    main(sys.argv[1:])
