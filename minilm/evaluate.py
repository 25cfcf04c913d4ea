"""Scoring a model on a text: perplexity, and how closely another model's predictions follow it.

    text = reference_text()                      # the Declaration of Independence (public domain)
    ppl, n = perplexity(model, ids, context=512)
    agreement = compare_predictions(model, reference, ids, context=512)

Perplexity = exp(mean negative log-likelihood of each next token), over non-overlapping
windows of `context` tokens (the first token of a window is never predicted).
"""
from __future__ import annotations

import math
from importlib import resources

import numpy as np


def reference_text() -> str:
    """The fixed text of the quality table: the Declaration of Independence (1776, public domain)."""
    return resources.files("minilm").joinpath("data/declaration.txt").read_text(encoding="utf-8")


def windows(ids, context: int):
    """Non-overlapping windows [1, <= context] of a token list, each with at least 2 tokens."""
    if context < 2:
        raise ValueError(f"context={context} must be at least 2 (one token predicts the next)")
    for start in range(0, len(ids) - 1, context):
        chunk = np.asarray([ids[start:start + context]], dtype=np.int64)
        if chunk.shape[1] >= 2:
            yield chunk


def perplexity(model, ids, context: int = 512, on_progress=None) -> tuple[float, int]:
    """-> (perplexity, number of predicted tokens) of the token list `ids`."""
    total_nll, total = 0.0, 0
    for chunk in windows(ids, context):
        loss = model(chunk, labels=chunk).loss                 # mean over chunk_len - 1 predictions
        total_nll += loss * (chunk.shape[1] - 1)
        total += chunk.shape[1] - 1
        if on_progress:
            on_progress(total, len(ids) - 1)
    if total == 0:
        raise ValueError("the text has fewer than 2 tokens")
    return math.exp(total_nll / total), total


def compare_predictions(model, reference, ids, context: int = 512) -> dict:
    """How `model`'s next-token logits follow `reference`'s on the same windows:
    top-1 agreement (fraction of positions with the same argmax) and the largest |logit difference|."""
    same, count, max_error = 0, 0, 0.0
    for chunk in windows(ids, context):
        ours, theirs = model(chunk).logits[0], reference(chunk).logits[0]     # [T, V]
        same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        count += ours.shape[0]
        max_error = max(max_error, float(np.abs(ours - theirs).max()))
    return {"top1_agreement": same / count, "max_logit_error": max_error, "positions": count}
