"""The teaching notebooks run top to bottom, offline, on the CPU, and say what they should.

Each notebook is executed with nbclient in a fresh python3 kernel whose
PYTHONPATH holds this checkout. Notebooks 01, 03 and 06 use the real default
model (SmolLM2-135M-Instruct); the session fixture converts it once.
The committed .ipynb files must equal what notebooks/build_notebooks.py
writes (cells only, outputs cleared).
"""
import json
import os
import sys
import time

import pytest

import nbformat
import nbclient
import ipykernel  # noqa: F401
import matplotlib  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
sys.path.insert(0, NOTEBOOKS)
import build_notebooks  # noqa: E402

# Text each notebook must print: the point it makes, not just "it ran".
EXPECTED = {
    "01_tour.ipynb": ["recorded intermediates", "max |difference| = 0.0e+00", "cache holds"],
    "02_norms_and_rope.ipynb": ["scale invariant: True True", "interleaved == permute, half-split, unpermute: True"],
    "03_attention.ipynb": ["GQA == MHA with repeated kv heads: True", "layer 3 (full_attention): attn.q, attn.k, attn.v, "
                           "attn.mask", "sliding window W=4"],
    "04_llama_vs_cohere.ipynb": ["cohere out = x + attn(n) + mlp(n):           True", "same greedy token: True"],
    "05_kernels.ipynb": ["backends: ['numpy', 'numba'"],
    "06_parity.ipynb": ["report ok: True", "first jump: Comparison(stage='prefill', name='layers.17.mlp.up'"],
}
USES_DEFAULT_MODEL = {"01_tour.ipynb", "03_attention.ipynb", "06_parity.ipynb"}
CELL_TIMEOUT = 240


def test_committed_notebooks_match_the_build_script(tmp_path):
    for path in build_notebooks.build(str(tmp_path)):
        name = os.path.basename(path)
        committed = os.path.join(NOTEBOOKS, name)
        assert os.path.exists(committed), f"{name} missing: run python notebooks/build_notebooks.py"
        with open(path, encoding="utf-8") as built, open(committed, encoding="utf-8") as f:
            assert json.load(built) == json.load(f), f"{name} is stale: run python notebooks/build_notebooks.py"
    assert set(EXPECTED) == set(build_notebooks.NOTEBOOKS)


def test_committed_notebooks_have_no_outputs():
    for name in build_notebooks.NOTEBOOKS:
        nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: outputs committed"



def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", list(build_notebooks.NOTEBOOKS))
def test_notebook_runs(name, request, monkeypatch, tmp_path):
    if name in USES_DEFAULT_MODEL:
        request.getfixturevalue("smollm2_dir")     # convert once per session; kernels inherit MINILM_CACHE
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    text = _outputs_text(nb)
    for expected in EXPECTED[name]:
        assert expected in text, f"{name}: expected output {expected!r} not found"
    print(f"{name}: {seconds:.1f} s")
