"""Text in, text out: the one-call helpers of the Python quick start.

    import minilm
    model = minilm.load()                                     # the default model, offline
    print(minilm.generate_text(model, "What is the capital of France?"))
    for piece in minilm.stream(model, "Tell me a joke.", temperature=0.7, seed=1):
        print(piece, end="", flush=True)

`prompt` is one user message (sent through the model's chat template, as `minilm generate` sends
it; plain text for a model without a template) or a list of {"role": ..., "content": ...} messages.
Settings are `minilm generate`'s: temperature (0 = greedy), top_p, top_k, min_p,
repetition_penalty, max_new_tokens, seed; each one left out comes from the checkpoint's
generation_config.json, else greedy with 256 new tokens.
"""
from __future__ import annotations

import os
from typing import Iterator

from .chat import FALLBACK_SETTINGS, check_settings, effective_settings, prompt_ids, sampling_kwargs


def tokenizer_for(model):
    """The model's tokenizer (minilm.tokenizer.Tokenizer), loaded once per model.

    A checkpoint folder holds it; for a .gguf it comes from the side folder minilm writes once
    into its cache (config, generation config and the tokenizer read from the GGUF's metadata).
    """
    if getattr(model, "_tokenizer", None) is None:
        from .resolve import resolve_model_dir
        from .tokenizer import Tokenizer
        folder = model.path
        if str(folder).endswith(".gguf") and os.path.isfile(folder):
            folder = resolve_model_dir(folder, weights=False)
        model._tokenizer = Tokenizer.from_pretrained(folder)
    return model._tokenizer


def stream(model, prompt, **settings) -> Iterator[str]:
    """Pieces of the reply as they are generated (whole characters; the end-of-text token is not shown).

    A bad prompt or setting is refused here, before the first piece is asked for.
    """
    tokenizer = tokenizer_for(model)
    ids = prompt_ids(tokenizer, _messages(prompt))
    kwargs = sampling_kwargs(_settings(model, settings))
    from .generate import stream_text
    return stream_text(model, tokenizer, ids, **kwargs)


def generate_text(model, prompt, **settings) -> str:
    """The whole reply to `prompt` as one string (see `stream` for the arguments)."""
    return "".join(stream(model, prompt, **settings))


def _messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                   for m in prompt):
        return prompt
    raise TypeError("prompt must be a string (one user message) or a non-empty list of "
                    "{'role': ..., 'content': ...} messages")


def _settings(model, given: dict) -> dict:
    """given > the checkpoint's generation_config.json > greedy, 256 new tokens; checked."""
    unknown = sorted(set(given) - set(FALLBACK_SETTINGS))
    if unknown:
        raise TypeError(f"unknown setting {unknown[0]!r}; the settings are: {', '.join(FALLBACK_SETTINGS)}")
    settings, _ = effective_settings(given, getattr(model, "generation_config", {}) or {})
    check_settings(settings)
    return settings
