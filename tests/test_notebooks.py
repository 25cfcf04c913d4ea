"""The teaching notebooks: reviewable Python sources, committed .ipynb files with outputs, and
each notebook runs top to bottom, offline, on the CPU, printing what it should.

notebooks/NN_name.py (jupytext percent format) is the source a reviewer reads and edits;
notebooks/NN_name.ipynb is the same code with its outputs, so a learner browsing the
repository sees the plots. After editing a source:

    python notebooks/execute.py notebooks/NN_name.py

The committed outputs cannot go stale: each fresh run's printed text (stdout and text displays) must
equal the committed text, floats to 3 significant digits, with timings, load averages and absolute
paths ignored (see `normalised`); the notebooks whose text depends on the CPU (CPU_DEPENDENT) are
compared only on the kind of CPU that made them. Committed notebooks show no library warnings.

Notebooks 01, 03, 06 and 07 use the real default model (SmolLM2-135M-Instruct); the session
fixture converts it once.
"""
import difflib
import os
import re
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
from execute import cpu_key, execute  # noqa: E402  (the same runner that writes the committed outputs)
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
# Notebooks whose printed text depends on the CPU: float32 rounding of kernels compiled for it (05, 06),
# fast mode's activation rounding over 30 layers and the kernel level's assembly (07). Their committed
# text is compared only on the kind of CPU that made it (the notebook's metadata "minilm.cpu");
# elsewhere they still run and must print EXPECTED.
CPU_DEPENDENT = {"05_kernels", "06_parity", "07_quantization"}


def compared_here(stem: str, committed) -> bool:
    """Whether this machine can check the committed text of notebook `stem` line by line."""
    return stem not in CPU_DEPENDENT or committed.metadata.get("minilm", {}).get("cpu") == cpu_key()
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


# --- committed outputs that cannot go stale ------------------------------------------------------------
# A fresh run's printed text must be the committed text, up to what legitimately varies between runs:
# timings (and the ratios and load averages printed beside them), absolute paths, and float digits
# beyond the third significant one. Integers (counts, shapes, token ids) must match exactly.
TIMING_LINE = re.compile(r"\d\s*(s|ms|µs)\b|/s\b|load average|speed")
FLOAT = re.compile(r"(?<![\w.])[-+]?(\d+\.\d*|\.\d+|\d+(?=e))(e[-+]?\d+)?(?![\w.])", re.I)
NUMBER = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?", re.I)
PATH = re.compile(r"(?<![\w.])/[^\s'\",)]+")


def normalised(text: str) -> str:
    """The comparable form of printed text: floats to 3 significant digits, every number on a timing
    line as '#', absolute paths as '<path>', runs of spaces as one."""
    lines = []
    for line in PATH.sub("<path>", text).splitlines():
        if TIMING_LINE.search(line):
            lines.append(NUMBER.sub("#", line))
        else:
            lines.append(FLOAT.sub(lambda m: f"{float(m.group(0)):.3g}", line))
    return "\n".join(re.sub(r"\s+", " ", line).rstrip() for line in lines)     # column padding varies too


def printed_by_cell(nb) -> list[str]:
    """Per code cell, what it printed (stdout) and displayed as text (figures appear as their repr).
    stderr is left out: progress bars and first-run notices (a cold Numba cache) come and go."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts = [out.get("text", "") if out.get("output_type") == "stream" else out["data"].get("text/plain", "")
                 for out in cell.get("outputs", [])
                 if (out.get("output_type") == "stream" and out.get("name") == "stdout") or "data" in out]
        cells.append(normalised("".join(parts)))
    return cells


def stale_cells(committed, fresh) -> list[str]:
    """One description per code cell whose committed text differs from the fresh run's."""
    problems = []
    for i, (old, new) in enumerate(zip(printed_by_cell(committed), printed_by_cell(fresh))):
        if old != new:
            diff = difflib.unified_diff(old.splitlines(), new.splitlines(), "committed", "fresh run", lineterm="", n=0)
            problems.append(f"code cell {i}:\n" + "\n".join(list(diff)[2:12]))
    return problems


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_and_prints_what_is_committed(source, request, monkeypatch, tmp_path):
    if source.stem in USES_DEFAULT_MODEL:
        request.getfixturevalue("smollm2_dir")     # convert once per session; kernels inherit MINILM_CACHE
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    fresh = execute(source, timeout=CELL_TIMEOUT)
    text = _outputs_text(fresh)
    for expected in EXPECTED[source.stem]:
        assert expected in text, f"{source.stem}: expected output {expected!r} not found"
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    stale = stale_cells(committed, fresh) if compared_here(source.stem, committed) else []
    assert not stale, (f"{source.stem}.ipynb's committed outputs are stale (re-execute it: python notebooks/execute.py "
                       f"{source.relative_to(ROOT)}):\n" + "\n".join(stale))
    print(f"{source.stem}: {time.perf_counter() - start:.1f} s")


def test_cpu_dependent_notebooks_are_compared_on_the_cpu_that_made_them():
    """Every notebook records its CPU; the CPU-dependent ones skip the line-by-line check only elsewhere."""
    for source in SOURCES:
        committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
        assert committed.metadata["minilm"]["cpu"], source.stem
    made_here = nbformat.v4.new_notebook(metadata={"minilm": {"cpu": cpu_key()}})
    made_elsewhere = nbformat.v4.new_notebook(metadata={"minilm": {"cpu": "some-other-cpu, kernels vector"}})
    assert compared_here("07_quantization", made_here) and not compared_here("07_quantization", made_elsewhere)
    assert compared_here("01_tour", made_elsewhere)                     # CPU-independent: compared everywhere


def test_normalised_keeps_counts_and_digits_that_matter():
    """The comparison can fail: a changed count, shape or third digit is a difference; timings are not."""
    assert normalised("453 recorded intermediates") != normalised("483 recorded intermediates")
    assert normalised("(1, 37, 576)") != normalised("(1, 38, 576)")
    assert normalised("max |d| = 1.23e-06") != normalised("max |d| = 1.24e-06")
    assert normalised("max |d| = 1.234e-06 at /tmp/a/b") == normalised("max |d| = 1.2341e-06 at /home/x/y")
    assert normalised("8 tokens in 5.7 s on numpy") == normalised("8 tokens in 6.1 s on numpy")
    assert normalised("numba  0.017 ms  17.61 GB/s") == normalised("numba  0.020 ms  15.02 GB/s")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_shows_no_library_warnings(source):
    """Warnings from torch, torchao and transformers are silenced where they start, not committed."""
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    errors = [out.get("text", "") for cell in committed.cells for out in cell.get("outputs", [])
              if out.get("output_type") == "stream" and out.get("name") == "stderr"]
    noisy = [line for text in errors for line in text.splitlines()
             if re.search(r"Warning|deprecated|Failed to load|^W\d{4}", line)]
    assert not noisy, f"{source.stem}.ipynb shows library warnings: {noisy[:3]}"
