"""Step 2: backend="cuda" against backend="numpy" on every weight format, for the three families.

Each case writes a tiny random checkpoint in the format (minilm.testing.random_checkpoint: a GGUF
for q8_0/q4_0/q4_1, a bitsandbytes checkpoint for nf4/fp4, a torchao one for int4/int8,
safetensors otherwise), loads it on both backends and compares, as tests/test_cuda_model.py does:

    forward    logits of a left-padded batch of 2 x 12 tokens (padding excluded)
    decode     prefill 5 tokens, then decode the other 7 one at a time with the KV cache
               (past cohere2's sliding window of 4)
    tokens     8 greedy tokens after a 7-token prompt: identical

Logits must agree within LOGIT_TOLERANCE. Quantized weights run in exact mode: fast mode rounds
activations to int8, and on a GPU a value within a few ulps of a rounding half can flip one code
(docs/cuda.md); the fast kernels are checked op by op by the device tests.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ..testing import (BNB_FORMATS, GGUF_FORMATS, LOGIT_TOLERANCE, TORCHAO_FORMATS, incremental_logits,
                       left_padded_batch, random_checkpoint, random_ids, tiny_config)

FAMILIES = ("llama", "cohere", "cohere2")
FORMATS = ("float32", "float16", "bfloat16", *GGUF_FORMATS, *TORCHAO_FORMATS, *BNB_FORMATS)
PREFILL, NEW_TOKENS = 5, 8


def load_options(fmt: str) -> dict:
    """minilm.load options for a checkpoint of `fmt`: dense formats stored as written; the layers
    torchao and bitsandbytes leave unquantized are bfloat16 in those files and stay so."""
    weight_dtype = fmt if fmt in ("float16", "bfloat16") else "bfloat16" if fmt in (*TORCHAO_FORMATS, *BNB_FORMATS) \
        else "float32"
    return {"weight_dtype": weight_dtype, "mode": "exact", "progress": False}


def max_diff(got, want, keep) -> float:
    """max |got - want| over the kept positions; NaN anywhere gives NaN (which fails the check)."""
    return float(np.abs(np.asarray(got) - np.asarray(want))[keep].max())


def outputs(model) -> dict:
    """What the comparison looks at, for one loaded model."""
    ids, mask = left_padded_batch(length=12)
    prompt = random_ids(1, 7, seed=3)
    generated = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])     # [1, prompt + new]
    return {"forward": model(ids, attention_mask=mask).logits,
            "decode": incremental_logits(model, ids, mask, PREFILL),
            "tokens": np.asarray(generated)[0, prompt.shape[1]:].tolist()}


def compare_case(family: str, fmt: str, backend: str, folder: str) -> dict:
    """One family in one format: the numbers, and the problems found (none: passed)."""
    import minilm
    from ..formats import Weight
    path = random_checkpoint(tiny_config(family), folder, dtype=fmt, seed=0)
    options = load_options(fmt)
    reference = outputs(minilm.load(path, backend="numpy", **options))
    model = minilm.load(path, backend=backend, **options)
    weight_formats = sorted({w.format for w in model.weights.values() if isinstance(w, Weight)})
    got = outputs(model)
    keep = left_padded_batch(length=12)[1].astype(bool)
    case = {"family": family, "format": fmt, "weight_formats": weight_formats,
            "forward_max_diff": max_diff(got["forward"], reference["forward"], keep),
            "decode_max_diff": max_diff(got["decode"], reference["decode"], keep),
            "same_tokens": got["tokens"] == reference["tokens"], "tokens": got["tokens"]}
    problems = [f"the model runs {', '.join(weight_formats)}, not {fmt}"] if fmt not in weight_formats else []
    problems += [f"{name} logits differ by {case[name + '_max_diff']:.3g} > {LOGIT_TOLERANCE:g}"
                 for name in ("forward", "decode") if not case[name + "_max_diff"] <= LOGIT_TOLERANCE]
    if not case["same_tokens"]:
        problems.append(f"greedy tokens {got['tokens']} != numpy's {reference['tokens']}")
    return {**case, "status": "failed" if problems else "passed", "problems": problems}


def run_compare(backend: str, families, formats, log) -> dict:
    """Every family x format; one case's exception fails that case and the others still run."""
    cases = []
    with tempfile.TemporaryDirectory(prefix="minilm-gpu-check-tiny-") as tmp:
        for family in families:
            for fmt in formats:
                try:
                    case = compare_case(family, fmt, backend, os.path.join(tmp, f"{family}-{fmt}"))
                except Exception as e:          # reported in the case, not raised: the sweep goes on
                    case = {"family": family, "format": fmt, "status": "failed",
                            "problems": [f"{type(e).__name__}: {e}"]}
                log(f"  {family} {fmt}: {case['status']}" + (f" ({'; '.join(case['problems'])})"
                                                           if case["problems"] else
                                                           f" (max |dlogit| {case['forward_max_diff']:.2g} / "
                                                           f"{case['decode_max_diff']:.2g})"))
                cases.append(case)
    failed = [c for c in cases if c["status"] == "failed"]
    return {"status": "failed" if failed or not cases else "passed", "backend": backend, "reference": "numpy",
            "tolerance": LOGIT_TOLERANCE, "cases": cases}
