"""The teaching notebooks: reviewable Python sources, committed .ipynb files with outputs, and
each notebook runs top to bottom, offline, on the CPU, printing what it should.

notebooks/NN_name.py (jupytext percent format) is the source a reviewer reads and edits;
notebooks/NN_name.ipynb is the same code with its outputs, so a learner browsing the
repository sees the plots. After editing a source:

    python notebooks/execute.py notebooks/NN_name.py

Notebooks 01, 03, 06 and 07 use the real default model (SmolLM2-135M-Instruct); the session
fixture converts it once.
"""
import os
import sys
import time
from pathlib import Path

import pytest

import ipykernel  # noqa: F401
import jupytext
import matplotlib  # noqa: F401
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))
from execute import execute  # noqa: E402  (the same runner that writes the committed outputs)
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))

# Text each notebook must print: the point it makes, not just "it ran".
EXPECTED = {
    "01_tour": ["recorded intermediates", "max |difference| = 0.0e+00", "cache holds"],
    "02_norms_and_rope": ["scale invariant: True True", "interleaved == permute, half-split, unpermute: True"],
    "03_attention": ["GQA == MHA with repeated kv heads: True", "layer 3 (full_attention): attn.q, attn.k, attn.v, "
                     "attn.mask", "sliding window W=4", "layer 3: weights (1, 4, 12, 12), weights @ v = recorded "
                     "context: True"],
    "04_llama_vs_cohere": ["cohere out = x + attn(n) + mlp(n):           True", "same greedy token: True"],
    "05_kernels": ["backends: ['numpy', 'numba'"],
    "06_parity": ["report ok: True", "first jump: Comparison(stage='prefill', name='layers.17.mlp.up'"],
    "07_quantization": ["q4_1 round trip of SmolLM2's float32 weights is lossless: True",
                        "GGUF byte j = element j (low nibble) | element j+16 (high nibble): True",
                        "bitsandbytes byte i = element 2i (high nibble) | element 2i+1 (low nibble): True",
                        "torchao byte i = element 2i (low nibble) | element 2i+1 (high nibble): True",
                        "q4_1 decode: kernel == reference: True", "all 576 rows bit-identical: True",
                        "load average (1, 5, 15 min):"],
}
USES_DEFAULT_MODEL = {"01_tour", "03_attention", "06_parity", "07_quantization"}
CELL_TIMEOUT = 240


def code_cells(nb) -> list[str]:
    return [cell.source.strip() for cell in nb.cells if cell.cell_type == "code"]


def test_every_notebook_has_a_source_and_an_expectation():
    assert {p.stem for p in SOURCES} == set(EXPECTED)
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == set(EXPECTED)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_is_its_source_with_outputs(source):
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    paired = jupytext.read(source)
    assert code_cells(committed) == code_cells(paired), \
        f"{source.name} and its .ipynb differ: python notebooks/execute.py {source.relative_to(ROOT)}"
    markdown = [c.source.strip() for c in committed.cells if c.cell_type == "markdown"]
    assert markdown == [c.source.strip() for c in paired.cells if c.cell_type == "markdown"]
    printed = [c for c in committed.cells if c.cell_type == "code" and c.outputs]
    assert printed, f"{source.stem}.ipynb is committed without outputs"


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs(source, request, monkeypatch, tmp_path):
    if source.stem in USES_DEFAULT_MODEL:
        request.getfixturevalue("smollm2_dir")     # convert once per session; kernels inherit MINILM_CACHE
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    text = _outputs_text(execute(source, timeout=CELL_TIMEOUT))
    for expected in EXPECTED[source.stem]:
        assert expected in text, f"{source.stem}: expected output {expected!r} not found"
    print(f"{source.stem}: {time.perf_counter() - start:.1f} s")
