"""What `minilm generate` and `minilm chat` share: sampling settings, streaming a reply, the chat loop.

Sampling settings come, for each key, from the command line (or `/params` in chat), else from the
checkpoint's generation_config.json (as transformers' generate and `transformers chat` do), else
minilm's defaults below: greedy, 256 new tokens.

    minilm chat
    > What is the capital of France?
    The capital of France is Paris.
    > /params temperature=0.7 max_new_tokens=64
    > /save conversation.json

Ctrl-C during a reply stops that reply and keeps the conversation; at the prompt, a second
Ctrl-C (or Ctrl-D, or /exit) leaves. When the next reply would not fit in the model's
`max_position_embeddings`, the oldest turns are dropped (the system prompt stays) and a
notice goes to stderr.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import write_text_atomically
from .progress import progress_bar

# Used when neither the command line nor generation_config.json sets a value (temperature 0 = greedy).
FALLBACK_SETTINGS = {"temperature": 0.0, "top_p": 1.0, "top_k": 50, "min_p": None, "repetition_penalty": 1.0,
                     "max_new_tokens": 256, "seed": None}
OPTIONAL = ("min_p", "seed")   # None is a valid value: off / a fresh random seed

HELP = """commands (never sent to the model):
  /help               this list
  /reset              forget the conversation (the system prompt stays)
  /system TEXT        set the system prompt (the conversation stays); /system alone removes it
  /params             show the sampling settings; /params temperature=0.7 top_p=0.9 max_new_tokens=128 sets them
  /save FILE          write the conversation to FILE as JSON
  /exit               leave (or Ctrl-D, or Ctrl-C twice at the prompt)
Ctrl-C during a reply stops it and keeps the conversation. A line starting with // sends it with one /."""


class SettingsError(ValueError):
    """A sampling setting out of range: one line, naming the setting as the user spelled it."""


# --- sampling settings --------------------------------------------------------

def checkpoint_settings(generation_config: dict) -> dict:
    """generation_config.json's sampling values in the CLI's terms (temperature 0 = greedy).

    As in transformers, a temperature without do_sample=true does not sample.
    """
    found = {k: generation_config[k] for k in ("top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens")
             if generation_config.get(k) is not None}
    if "do_sample" in generation_config or "temperature" in generation_config:
        sampling = bool(generation_config.get("do_sample"))
        found["temperature"] = float(generation_config.get("temperature") or 1.0) if sampling else 0.0
    return found


def effective_settings(given: dict, generation_config: dict) -> tuple[dict, dict]:
    """(settings, source of each): `given` (None = not given) > generation_config.json > FALLBACK_SETTINGS."""
    from_file = checkpoint_settings(generation_config)
    settings, sources = {}, {}
    for key, fallback in FALLBACK_SETTINGS.items():
        if given.get(key) is not None:
            settings[key], sources[key] = given[key], "command line"
        elif key in from_file:
            settings[key], sources[key] = from_file[key], "generation_config.json"
        else:
            settings[key], sources[key] = fallback, "default"
    return settings, sources


def check_settings(settings: dict, spell=lambda key: key) -> None:
    """Raise SettingsError for the first value out of range; spell(key) names it ("--top-p" or "top_p")."""
    rules = {"max_new_tokens": (lambda v: v > 0, "must be a positive integer"),
             "temperature": (lambda v: v >= 0, "must be >= 0 (0 = greedy)"),
             "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
             "top_k": (lambda v: v >= 0, "must be >= 0 (0 = off)"),
             "min_p": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
             "repetition_penalty": (lambda v: v > 0, "must be > 0 (1 = off)")}
    for key, (ok, rule) in rules.items():
        value = settings.get(key)
        if value is not None and not ok(value):
            raise SettingsError(f"{spell(key)}={value} {rule}")


def sampling_kwargs(settings: dict) -> dict:
    """`generate`'s arguments, every one given (so generation_config.json is not consulted twice)."""
    temperature = settings["temperature"]
    return dict(max_new_tokens=settings["max_new_tokens"], do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else 1.0, top_k=settings["top_k"],
                top_p=settings["top_p"], min_p=settings["min_p"],
                repetition_penalty=settings["repetition_penalty"], seed=settings["seed"])


def format_settings(settings: dict, sources: dict | None = None) -> str:
    """`temperature=0.2 (generation_config.json), top_p=0.9 ...`; temperature 0 is shown as greedy."""
    parts = []
    for key, value in settings.items():
        shown = "0 (greedy)" if key == "temperature" and value == 0 else value
        parts.append(f"{key}={shown}" + (f" ({sources[key]})" if sources else ""))
    return ", ".join(parts)


def parse_params(text: str, settings: dict) -> dict:
    """`temperature=0.7 top-p=0.9 seed=none` -> a new settings dict (the old one is untouched)."""
    new = dict(settings)
    for item in text.split():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in FALLBACK_SETTINGS:
            raise SettingsError(f"/params takes key=value with key one of: {', '.join(FALLBACK_SETTINGS)}; "
                                f"got {item!r}")
        kind = int if key in ("top_k", "max_new_tokens", "seed") else float
        try:
            new[key] = None if key in OPTIONAL and raw.lower() == "none" else kind(raw)
        except ValueError:
            raise SettingsError(f"{key}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    check_settings(new)
    return new


# --- one reply ------------------------------------------------------------------

def prompt_ids(tokenizer, messages: list[dict]) -> np.ndarray:
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:  # a base model without a template: plain text continuation
        ids = tokenizer.encode("\n".join(m["content"] for m in messages))
    return np.asarray([ids], dtype=np.int64)


@dataclass
class Reply:
    text: str
    stopped: bool = False     # Ctrl-C ended it early


def stream_reply(model, tokenizer, ids: np.ndarray, settings: dict, backend: str, out=None,
                 interruptible: bool = False, threads: int | None = None) -> Reply:
    """Print the reply as it is generated; return it. Speed goes to stderr.

    interruptible: Ctrl-C stops the reply and returns what was printed (chat); otherwise it propagates.
    threads: a fixed kernel thread count; None lets generate adapt it per step.
    Tokens/s counts from the first piece on, so prefill (and Numba's one-time compilation
    on a first run) shows separately as the time to the first token.
    """
    from .generate import PREFILL_CHUNK, stream_text
    out = out or sys.stdout
    pieces, start, first, stopped = [], time.perf_counter(), None, False
    prompt_bar = progress_bar(ids.shape[1], "reading the prompt", enabled=ids.shape[1] > PREFILL_CHUNK, unit="token")
    try:
        for piece in stream_text(model, tokenizer, ids, threads=threads, **sampling_kwargs(settings),
                                 on_prefill_progress=lambda done, total: prompt_bar.update(done - prompt_bar.n)):
            if first is None:
                prompt_bar.close()                      # the bar ends before the reply starts
                first = time.perf_counter()
            pieces.append(piece)
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        if not interruptible:
            raise
        stopped = True
    finally:
        prompt_bar.close()
    end = time.perf_counter()
    out.write("\n")
    out.flush()
    text = "".join(pieces)
    n_tokens = len(tokenizer.encode(text, add_special_tokens=False)) if text else 0
    first = first or end
    rate = (n_tokens - 1) / (end - first) if n_tokens > 1 and end > first else float("nan")
    sys.stderr.write(f"[{'stopped after ' if stopped else ''}{n_tokens} tokens; first after {first - start:.2f} s, "
                     f"then {rate:.1f} tokens/s; backend {backend}]\n")
    return Reply(text, stopped)


# --- the chat loop --------------------------------------------------------------

def notice(text: str) -> None:
    print(f"[{text}]", file=sys.stderr, flush=True)


@dataclass
class ChatSession:
    """One conversation: the model, its settings, the system prompt and the turns so far."""
    model: object
    tokenizer: object
    settings: dict
    backend: str
    system: str | None = None
    threads: int | None = None
    messages: list = field(default_factory=list)     # user / assistant turns, oldest first

    def conversation(self, messages: list | None = None) -> list[dict]:
        """The system prompt (if any) and the turns: what the chat template gets."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + (self.messages if messages is None else messages)

    # --- commands ---------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command; False when the user asked to leave."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/help":
            print(HELP, file=sys.stderr)
        elif name == "/reset":
            self.messages = []
            notice("conversation cleared")
        elif name == "/system":
            self.system = rest or None
            notice(f"system prompt {'set' if rest else 'removed'}")
        elif name == "/params":
            if rest:
                self.settings = parse_params(rest, self.settings)
            print(format_settings(self.settings), file=sys.stderr)
        elif name == "/save":
            self.save(rest)
        else:
            notice(f"unknown command {name}; /help lists the commands (start with // to send a line with /)")
        return True

    def save(self, path: str) -> None:
        if not path:
            raise ValueError("/save needs a file name: /save FILE")
        data = {"model": getattr(self.model, "path", None), "settings": self.settings,
                "messages": self.conversation()}
        write_text_atomically(path, json.dumps(data, indent=1, ensure_ascii=False))    # a failed save keeps the last
        notice(f"saved {len(self.conversation())} messages to {path}")

    # --- a turn -----------------------------------------------------------------
    def fitted_prompt(self) -> np.ndarray:
        """The conversation's ids, dropping the oldest turns while the next reply would not fit.

        Nothing is dropped when even the newest message alone leaves no room (that is an error).
        """
        max_pos, wanted = self.model.config.max_position_embeddings, self.settings["max_new_tokens"]
        messages, dropped = list(self.messages), 0
        ids = prompt_ids(self.tokenizer, self.conversation(messages))
        while ids.shape[1] + wanted > max_pos and len(messages) > 1:
            messages.pop(0)                                        # the oldest turn: a user message ...
            if messages and messages[0]["role"] == "assistant":
                messages.pop(0)                                    # ... and its reply
            ids, dropped = prompt_ids(self.tokenizer, self.conversation(messages)), dropped + 1
        if ids.shape[1] >= max_pos:
            raise ValueError(f"the conversation has {ids.shape[1]} tokens; max_position_embeddings={max_pos} "
                             "leaves no room for a reply (shorten the message or the system prompt)")
        if dropped:
            turns = "the oldest turn" if dropped == 1 else f"the {dropped} oldest turns"
            notice(f"context full: dropped {turns} to fit max_position_embeddings={max_pos} "
                   "(the system prompt stays)")
        if ids.shape[1] + wanted > max_pos:
            notice(f"the reply can have at most {max_pos - ids.shape[1]} tokens (max_position_embeddings={max_pos})")
        self.messages = messages
        return ids

    def turn(self, text: str) -> None:
        """Send one user message and stream the reply; Ctrl-C keeps what was said so far."""
        self.messages.append({"role": "user", "content": text})
        try:
            reply = stream_reply(self.model, self.tokenizer, self.fitted_prompt(), self.settings, self.backend,
                                 interruptible=True, threads=self.threads)
        except KeyboardInterrupt:   # before the first token (tokenizing, prefill): nothing to keep
            self.messages.pop()
            print(file=sys.stdout, flush=True)
            notice("stopped")
            return
        except ValueError:          # e.g. no room left: the message is not part of the conversation
            self.messages.pop()
            raise
        if reply.text or not reply.stopped:
            self.messages.append({"role": "assistant", "content": reply.text})
        else:
            self.messages.pop()     # stopped before any text: forget the question too
        if reply.stopped:
            notice("reply stopped; the conversation is kept")


def read_line(prompt: str = "> ") -> str | None:
    """One line from the user; None when the user leaves (Ctrl-D, or Ctrl-C twice in a row)."""
    interrupted = False
    while True:
        try:
            return input(prompt)
        except EOFError:
            print(file=sys.stderr)
            return None
        except KeyboardInterrupt:
            print(file=sys.stderr)
            if interrupted:
                return None
            interrupted = True
            notice("Ctrl-C again, Ctrl-D or /exit to leave; /help for commands")


def run_chat(session: ChatSession) -> int:
    """The read-reply loop; errors in one turn or command are shown in one line and the chat goes on."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    notice("minilm chat: type a message; /help for commands; Ctrl-C stops a reply; Ctrl-D exits")
    while True:
        line = read_line()
        if line is None:
            return 0
        if not line.strip():
            continue
        try:
            if line.startswith("/") and not line.startswith("//"):
                if not session.command(line):
                    return 0
            else:
                session.turn(line[1:] if line.startswith("//") else line)
        except (ValueError, OSError) as e:   # a bad /params value, an unwritable /save file, no room left
            print(f"minilm: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
