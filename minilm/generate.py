"""Generation: the decode loop, transformers' logits-processor order, stopping, streaming.

Each step (docs/semantics.md sections 8.2-8.4):
  scores = float32(logits[:, -1])              (Cohere logits are already scaled)
  repetition penalty                           (greedy and sampling alike)
  temperature -> top-k -> top-p -> min-p       (sampling only)
  argmax, or a draw from softmax(scores)
  finished rows emit pad; a row finishes on any eos id (kept in the output) or a stop string.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .ops import sampling


class GenerationError(ValueError):
    """An invalid generation argument: names the argument and its value."""


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: tuple = ()
    pad_token_id: int = 0
    seed: int | None = None
    stop_strings: tuple = ()

    def validate(self) -> None:
        for key in SETTING_RULES:
            check_setting(key, getattr(self, key))
        check_setting("eos_token_id", self.eos_token_id)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    """A finite int or float (not a bool, not a string): NaN compares false with every bound."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(value)


def _is_token_ids(value) -> bool:
    return _is_int(value) and value >= 0 or (isinstance(value, (list, tuple))
                                             and all(_is_int(v) and v >= 0 for v in value))


# Every setting generate takes from its arguments or generation_config.json: (test, what it must be).
SETTING_RULES = {
    "max_new_tokens": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "do_sample": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "temperature": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "top_k": (lambda v: v is None or _is_int(v) and v >= 0, "an integer >= 0 (or None)"),
    "top_p": (lambda v: _is_real(v) and 0 < v <= 1, "in (0, 1]"),
    "min_p": (lambda v: v is None or _is_real(v) and 0 <= v <= 1, "in [0, 1] (or None)"),
    "repetition_penalty": (lambda v: _is_real(v) and v > 0, "a finite number > 0"),
    "seed": (lambda v: v is None or _is_int(v) and v >= 0, "an integer >= 0 (or None)"),
    "pad_token_id": (lambda v: v is None or _is_int(v) and v >= 0, "a token id (an integer >= 0)"),
    "eos_token_id": (lambda v: v is None or _is_token_ids(v), "a token id or a list of token ids"),
}


def check_setting(key: str, value) -> None:
    """One line naming the setting when its value has the wrong type or range."""
    test, wanted = SETTING_RULES[key]
    if not test(value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise GenerationError(f"{key}={shown} must be {wanted}")


class _Default:
    """The value of a `generate` argument the caller left out: see make_generation_config."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()
# generation_config.json keys that set a default (transformers reads more; these are the ones minilm has).
CHECKPOINT_SETTINGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
                       "repetition_penalty")


def make_generation_config(model, eos_token_id=None, **kwargs) -> GenerationConfig:
    """Settings as transformers' generate fills them: an argument given (not DEFAULT) >
    the checkpoint's generation_config.json (`model.generation_config`) > GenerationConfig's
    defaults. eos/pad: the argument > generation_config.json > config.json (pad: else eos[0])."""
    saved = getattr(model, "generation_config", None) or {}
    settings = {k: saved[k] for k in CHECKPOINT_SETTINGS if saved.get(k) is not None}
    settings.update({k: v for k, v in kwargs.items() if v is not DEFAULT})
    check_setting("eos_token_id", eos_token_id)
    for key, value in kwargs.items():
        if value is not DEFAULT and key in SETTING_RULES:
            check_setting(key, value)
    if eos_token_id is None:
        eos_token_id = saved.get("eos_token_id", model.config.eos_token_id)
    eos = tuple(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else \
        (() if eos_token_id is None else (int(eos_token_id),))
    pad = saved.get("pad_token_id")
    if pad is None:
        pad = model.config.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    stop = settings.pop("stop_strings", None) or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stop):     # "" would stop at the first token
        raise GenerationError(f"stop_strings={stop!r} must be non-empty strings")
    if settings.get("do_sample") and settings.get("temperature") == 0:
        settings["do_sample"] = False  # temperature 0 means greedy
    cfg = GenerationConfig(eos_token_id=eos, pad_token_id=int(pad), stop_strings=stop, **settings)
    cfg.validate()
    return cfg


def process_scores(scores: np.ndarray, sequences: np.ndarray, prompt_pad: np.ndarray,
                   cfg: GenerationConfig, ops=sampling) -> np.ndarray:
    """Apply transformers' logits processors in its order. scores [B, V] float32 on the host.

    `ops` supplies top_k_filter / top_p_filter: a backend (numba has kernels for them) or the reference.
    """
    if cfg.repetition_penalty != 1.0:
        ignore = np.zeros(sequences.shape, dtype=bool)
        ignore[:, :prompt_pad.shape[1]] = prompt_pad            # left padding is not penalised
        scores = sampling.repetition_penalty(scores, sequences, cfg.repetition_penalty, ignore)
    if not cfg.do_sample:
        return scores
    if cfg.temperature != 1.0:
        scores = sampling.temperature(scores, cfg.temperature)
    if cfg.top_k:
        scores = ops.top_k_filter(scores, cfg.top_k)
    if cfg.top_p < 1.0:
        scores = ops.top_p_filter(scores, cfg.top_p)
    if cfg.min_p is not None:
        scores = sampling.min_p_filter(scores, cfg.min_p)
    return scores


def other_runnable_tasks() -> int:
    """Runnable tasks on the machine outside this process (Linux: /proc/stat procs_running, less this
    process's own running threads: its thread pool still spins for a while after a parallel
    region). The least of two reads 2 ms apart; 0 where it cannot be read."""
    counts = []
    for attempt in range(2):
        try:
            with open("/proc/stat") as f:
                running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
            counts.append(running - own_running_threads())
        except (OSError, ValueError, IndexError, StopIteration):
            return 0
        if attempt == 0:
            time.sleep(0.002)
    return max(0, min(counts))


def own_running_threads() -> int:
    """This process's threads in state R (/proc/self/task/*/stat), the one asking included."""
    import os
    running = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                running += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            pass                                          # a thread that ended meanwhile
    return max(running, 1)


class ThreadTuner:
    """The thread count of each decode step: all cores, unless another process holds one of them.

    A decode step is ~200 parallel regions (one per matrix), and every region ends when its slowest
    thread does: a thread that shares its core with another process waits for a time slice at each
    of them, and one thread alone is then several times faster (measured: docs/benchmarks.md). So:
      - at the start of each generate call the tuner counts the other runnable processes; if they
        leave one core or none, it starts with one thread (a 7B step takes seconds: the first
        ones matter) and probes all threads after 8 steps;
      - every step is timed; now and then one step runs with the other thread count (a probe), and
        the tuner switches to it if it was 10% faster than the median of the count's recent steps. A probe that loses waits twice as long
        before the next one (up to 64 steps), so a steady machine pays ~1% for the watching;
      - a step 1.5x slower than the median of its count's recent steps probes at once (the machine
        just got busy), as does the first step of a model whose steps take over 0.25 s; steps
        shorter than that jitter, so there it takes two slow steps in a row.
    A model keeps its tuner (`model_tuner`), so what one generate call learned holds in the next.
    """

    SLOW_STEP_S = 0.25

    def __init__(self, ops, threads: int | None = None, runnable=None):
        self.ops = ops
        self.full = ops.threads()
        self.fixed = threads is not None or self.full == 1
        self.runnable = runnable or other_runnable_tasks
        self.current = ops.threads(threads) if threads is not None else self.full
        self.times = {self.full: [], 1: []}
        self.interval, self.countdown, self.probing, self.seen_busy, self.slow_steps = 4, 4, False, False, 0
        self.begin()

    def begin(self) -> None:
        """At the start of a generate call: fewer threads if other processes want the cores now."""
        if self.fixed or self.probing:
            return
        others = self.runnable()
        if others > 0 and self.current == self.full and self.full - others <= 1:
            self.current, self.seen_busy = 1, True        # evidence enough: the next probe can wait
            self.interval = self.countdown = 8
        elif others == 0 and self.current != self.full and not self.times[self.full]:
            self.current = self.full

    def __enter__(self):
        if not self.fixed:
            self.ops.threads(self.current)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.fixed:
            return
        times = self.times[self.current]
        step = time.perf_counter() - self.start
        self.slow_steps = self.slow_steps + 1 if times and step > 1.5 * median(times) else 0
        slow = self.slow_steps >= (1 if step > self.SLOW_STEP_S else 2)    # short steps jitter: two in a row
        first_long = not times and step > self.SLOW_STEP_S and not self.times[self.other(self.current)] \
            and not self.seen_busy
        times.append(step)
        del times[:-5]
        self.countdown -= 1
        if self.probing:                    # the probe step is done: switch if it was clearly faster
            kept = self.times[self.current_before]
            wins = not kept or median(times) < 0.9 * median(kept)
            best = self.current if wins else self.current_before
            self.interval = 4 if best != self.current_before else min(2 * self.interval, 64)
            self.current, self.probing, self.countdown = best, False, self.interval
        elif self.countdown <= 0 or slow or first_long:   # time to try the other count for one step
            if slow:                                      # the machine changed: older times are stale
                self.times = {self.current: [step], self.other(self.current): []}
            self.current_before = self.current
            self.current = self.other(self.current)
            self.probing = True

    def other(self, count: int) -> int:
        return 1 if count == self.full else self.full

    def restore(self) -> None:
        """Leave the backend with all its threads (prefill and other callers want them)."""
        if not self.fixed:
            self.ops.threads(self.full)


def model_tuner(model, threads: int | None) -> ThreadTuner:
    """A fixed count's tuner, or the model's own adaptive one: a chat's next turn (or a bench's next
    run) starts from the count the last call found best, not from all threads again."""
    if threads is not None:
        return ThreadTuner(model.backend, threads)
    tuner = getattr(model, "thread_tuner", None)
    if tuner is None or tuner.ops is not model.backend:
        tuner = model.thread_tuner = ThreadTuner(model.backend)
    else:
        tuner.begin()
    return tuner


def median(values: list) -> float:
    return sorted(values)[len(values) // 2]


PREFILL_CHUNK = 512   # prompt tokens per forward: bounds activation memory; sliding layers cost O(T * W)


def prefill(model, ids, mask, positions, cache, chunk: int = PREFILL_CHUNK, on_progress=None) -> np.ndarray:
    """Feed the prompt [B, T] through the cache `chunk` tokens at a time; -> the last position's
    logits [B, 1, V]. on_progress(done, total) after each chunk.

    Each chunk attends over the cache and itself, so the result equals one forward over the whole
    prompt (a sliding layer's ring keeps the last W keys, all a later chunk can see). RoPE types whose
    frequencies depend on the call's length (dynamic, longrope) prefill in one forward instead.
    """
    T = ids.shape[1]
    if chunk <= 0 or model.rotary.depends_on_length:
        chunk = T
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        logits = model(ids[:, start:end], attention_mask=mask[:, start:end], cache=cache,
                       position_ids=positions[:, start:end], logits_to_keep=1).logits
        if on_progress:
            on_progress(end, T)
    return logits


def token_ids(values, what: str) -> np.ndarray:
    """[B, T] int64 token ids; floats (1.5 would silently become token 1) and >2-D arrays are refused."""
    try:
        ids = np.atleast_2d(np.asarray(values))
    except ValueError:                                       # numpy's "inhomogeneous shape" of ragged rows
        raise GenerationError(f"{what} must be a rectangular array (rows of equal length); pad the rows and "
                              "pass an attention_mask") from None
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise GenerationError(f"{what} must hold integer token ids, not {ids.dtype}")
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise GenerationError(f"{what} has shape {ids.shape}; expected [batch, tokens] with batch >= 1")
    return ids.astype(np.int64)


def generate_stream(model, input_ids, attention_mask=None, tokenizer=None, prefill_chunk: int = PREFILL_CHUNK,
                    on_prefill_progress=None, threads: int | None = None, **kwargs) -> Iterator[np.ndarray]:
    """Yield the next token of every row, [B] int64, one step at a time (finished rows yield pad).

    The prompt is prefilled `prefill_chunk` tokens at a time (on_prefill_progress(done, total) after
    each chunk); then one token per step through the KV cache. threads: a fixed thread count for the
    kernels; None adapts it per step to what the machine gives (ThreadTuner).
    """
    cfg = make_generation_config(model, **kwargs)
    if not _is_int(prefill_chunk) or prefill_chunk < 0:
        raise GenerationError(f"prefill_chunk={prefill_chunk!r} must be an integer >= 0 (0: the whole prompt at once)")
    if threads is not None and (not _is_int(threads) or threads <= 0):
        raise GenerationError(f"threads={threads!r} must be a positive integer (or None)")
    ids = token_ids(input_ids, "input_ids")
    B, T = ids.shape
    if T == 0:
        raise GenerationError("the prompt is empty: input_ids has no tokens")
    max_pos = model.config.max_position_embeddings
    if T >= max_pos:
        raise GenerationError(f"the prompt has {T} tokens; max_position_embeddings={max_pos} leaves no room")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask).astype(np.int64)
    if mask.shape != ids.shape:
        raise GenerationError(f"attention_mask has shape {mask.shape}, input_ids has {ids.shape}")
    if cfg.stop_strings and tokenizer is None:
        raise GenerationError("stop_strings needs the tokenizer to be passed")
    prompt_pad = np.cumsum(mask, axis=1) == 0                   # left padding before the first real token
    # transformers' generate: positions count real tokens only; pads sit at 0.
    position_ids = np.where(mask == 0, 0, np.cumsum(mask, axis=1) - 1)
    cache = model.new_cache(B)
    tuner = model_tuner(model, threads)
    try:
        yield from decode_steps(model, ids, mask, position_ids, cache, cfg, tokenizer, prompt_pad, tuner,
                                prefill_chunk, on_prefill_progress)
    finally:
        tuner.restore()


def decode_steps(model, ids, mask, position_ids, cache, cfg, tokenizer, prompt_pad, tuner, prefill_chunk,
                 on_prefill_progress) -> Iterator[np.ndarray]:
    B, T = ids.shape
    rng = np.random.default_rng(cfg.seed)
    sequences = ids
    finished = np.zeros(B, dtype=bool)
    step_pos = position_ids
    for step in range(min(cfg.max_new_tokens, model.config.max_position_embeddings - T)):
        if step == 0:
            logits = prefill(model, ids, mask, position_ids, cache, prefill_chunk, on_prefill_progress)
        else:
            with tuner:
                logits = model(step_ids, attention_mask=step_mask, cache=cache, position_ids=step_pos).logits
        scores = process_scores(logits[:, -1].astype(np.float32), sequences, prompt_pad, cfg, model.backend)
        check_scores_finite(logits[:, -1], scores, step)
        next_ids = sampling.sample(scores, rng) if cfg.do_sample else model.backend.argmax(scores)
        next_ids = np.asarray(model.backend.to_numpy(next_ids), dtype=np.int64)  # host ids, any backend
        next_ids = np.where(finished, cfg.pad_token_id, next_ids)
        sequences = np.concatenate([sequences, next_ids[:, None]], axis=1)
        finished |= np.isin(next_ids, cfg.eos_token_id)
        if cfg.stop_strings:
            finished |= _hit_stop_string(tokenizer, sequences[:, T:], cfg.stop_strings)
        yield next_ids
        if finished.all():
            return
        step_ids, step_mask = next_ids[:, None], np.ones((B, 1), dtype=np.int64)
        step_pos = step_pos[:, -1:] + 1


def check_scores_finite(logits: np.ndarray, scores: np.ndarray, step: int) -> None:
    """Stop on NaN/Inf instead of sampling garbage (NaN probabilities silently become token 0).

    logits [B, V] as the model gave them must all be finite; the processed scores may hold -inf
    (filtered tokens), so for them one max per row suffices: NaN if any score is, +inf if one
    is, -inf if nothing is left (temperature 1e-45 or a NaN repetition_penalty do this).
    """
    for what, bad in (("logits", ~np.isfinite(logits).all(axis=-1)),
                      ("scores after temperature, repetition_penalty, top_k, top_p and min_p",
                       ~np.isfinite(np.max(scores, axis=-1)))):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise GenerationError(f"step {step}: the {what} of row {row} contain NaN or Inf; nothing can be "
                                  "sampled (check the weights, config.json or the sampling arguments)")


def _hit_stop_string(tokenizer, generated: np.ndarray, stop_strings: Sequence[str]) -> np.ndarray:
    # Decode only a short tail: a stop string can only complete at the newest token.
    longest = max(len(s) for s in stop_strings)
    tails = [tokenizer.decode(row[-(longest + 8):].tolist()) for row in generated]
    return np.array([any(s in tail for s in stop_strings) for tail in tails])


def generate(model, input_ids, max_new_tokens: int = DEFAULT, do_sample: bool = DEFAULT,
             temperature: float = DEFAULT, top_k: int | None = DEFAULT, top_p: float = DEFAULT,
             min_p: float | None = DEFAULT, repetition_penalty: float = DEFAULT, eos_token_id=None,
             attention_mask=None, seed: int | None = None, stop_strings=None, tokenizer=None,
             prefill_chunk: int = PREFILL_CHUNK, on_prefill_progress=None, threads: int | None = None) -> np.ndarray:
    """Token ids [B, T + new], like transformers' generate (rows padded once finished).

    An argument left out comes from the checkpoint's generation_config.json (`model.generation_config`),
    else from GenerationConfig (greedy, 20 new tokens, top_k 50, ...): pass do_sample=False for greedy
    on a checkpoint whose generation_config.json samples.
    """
    ids = token_ids(input_ids, "input_ids")
    steps = list(generate_stream(model, ids, attention_mask=attention_mask, tokenizer=tokenizer,
                                 prefill_chunk=prefill_chunk, on_prefill_progress=on_prefill_progress,
                                 threads=threads,
                                 max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                 top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                 eos_token_id=eos_token_id, seed=seed, stop_strings=stop_strings))
    return np.concatenate([ids] + [s[:, None] for s in steps], axis=1) if steps else ids


def stream_text(model, tokenizer, input_ids, **kwargs) -> Iterator[str]:
    """Yield text pieces of a single-row generation as tokens arrive (no broken characters).

    The eos token itself is not shown; stop strings end the stream after the piece that completes them.
    """
    decoder = tokenizer.stream_decoder(skip_special_tokens=True)
    eos = make_generation_config(model, eos_token_id=kwargs.get("eos_token_id")).eos_token_id
    for next_ids in generate_stream(model, input_ids, tokenizer=tokenizer, **kwargs):
        token = int(next_ids[0])
        if token in eos:
            break
        piece = decoder.add(token)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail
