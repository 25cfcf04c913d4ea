"""`minilm bench --quality`: what each weight format costs in accuracy, on the real model.

For every format, SmolLM2's float32 checkpoint is quantized at load (the decoder's linear
layers; the embedding and tied head stay float32, as bitsandbytes and torchao leave them), and
the GGUF file is also run as stored. Each row: perplexity on a fixed public-domain text (the
Declaration of Independence), top-1 agreement of next-token predictions with float32, the
largest logit difference from float32, the weight bytes, and decode speed (numba, one short run).
"""
from __future__ import annotations

import time

VARIANTS = [  # label, minilm.load keyword arguments
    ("float32", {}),
    ("bfloat16", {"weight_dtype": "bfloat16"}),
    ("q8_0 exact", {"quantize": "q8_0", "mode": "exact"}), ("q8_0 fast", {"quantize": "q8_0", "mode": "fast"}),
    ("q4_0 exact", {"quantize": "q4_0", "mode": "exact"}), ("q4_0 fast", {"quantize": "q4_0", "mode": "fast"}),
    ("q4_1 exact", {"quantize": "q4_1", "mode": "exact"}), ("q4_1 fast", {"quantize": "q4_1", "mode": "fast"}),
    ("int8 exact", {"quantize": "int8", "mode": "exact"}), ("int8 fast", {"quantize": "int8", "mode": "fast"}),
    ("int4 g128 (torchao default)", {"quantize": "int4", "mode": "exact"}),
    ("int4 g64 exact", {"quantize": "int4", "mode": "exact", "quantize_options": {"group_size": 64}}),
    ("int4 g64 fast", {"quantize": "int4", "mode": "fast", "quantize_options": {"group_size": 64}}),
    ("fp4", {"quantize": "fp4", "mode": "exact"}), ("nf4", {"quantize": "nf4", "mode": "exact"}),
]


def weight_bytes(model) -> int:
    from .engines import unique_arrays
    from ..formats import Weight
    return sum(a.nbytes for a in unique_arrays(a for w in model.weights.values()
                                                for a in (w.arrays.values() if isinstance(w, Weight) else [w])))


def decode_speed(model, prompt, tokens: int = 32) -> float:
    from ..generate import generate_stream
    model.generate(prompt, max_new_tokens=2, eos_token_id=[])                   # JIT and caches warm
    times, t0 = [], time.perf_counter()
    for _ in generate_stream(model, prompt, max_new_tokens=tokens + 1, eos_token_id=[]):
        times.append(time.perf_counter() - t0)
    return tokens / (times[-1] - times[0])


def quality_table(model_dir: str, gguf: str | None, context: int = 512, log=print, max_tokens: int | None = None,
                  decode_tokens: int = 32) -> dict:
    """One row per weight format (max_tokens: only the text's first tokens, for a quick look)."""
    import warnings

    import minilm
    from ..evaluate import compare_predictions, perplexity, reference_text
    from ..tokenizer import Tokenizer
    ids = Tokenizer.from_pretrained(model_dir).encode(reference_text())[:max_tokens]
    prompt = [ids[:16]]
    reference = minilm.load(model_dir, backend="numba", progress=False)
    variants = VARIANTS + ([("GGUF as stored, exact", {"source": gguf, "mode": "exact"}),
                            ("GGUF as stored, fast", {"source": gguf, "mode": "fast"})] if gguf else [])
    rows = []
    for label, kwargs in variants:
        kwargs = dict(kwargs)
        source = kwargs.pop("source", model_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = minilm.load(source, backend="numba", progress=False, **kwargs)
        ppl, n = perplexity(model, ids, context)
        row = {"variant": label, "perplexity": ppl, "tokens": n, "weight_bytes": weight_bytes(model),
               **compare_predictions(model, reference, ids, context),
               "decode_tok_s": decode_speed(model, prompt, decode_tokens),
               "notes": [str(w.message).split(": ", 1)[-1] for w in caught]}
        log(f"  {label}: perplexity {ppl:.3f}, top-1 agreement {row['top1_agreement']:.3f}")
        rows.append(row)
    return {"model_dir": model_dir, "gguf": gguf, "context": context, "rows": rows}


def format_quality(report: dict) -> str:
    from .report import gb, table
    rows = [("weights", "perplexity", "top-1 = float32", "max |dlogit|", "weight bytes", "decode tok/s")]
    for r in report["rows"]:
        rows.append((r["variant"], f"{r['perplexity']:.3f}", f"{100 * r['top1_agreement']:.1f}%",
                     f"{r['max_logit_error']:.3g}", gb(r["weight_bytes"]), f"{r['decode_tok_s']:.1f}"))
    notes = [f"  {r['variant']}: {note}" for r in report["rows"] for note in r["notes"]]
    return "\n".join([f"model {report['model_dir']}; text: the Declaration of Independence, {report['rows'][0]['tokens']}"
                      f" predicted tokens in windows of {report['context']}", ""] + table(rows)
                     + ([""] + notes if notes else []))
