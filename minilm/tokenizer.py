"""Tokenizer: a Hugging Face `tokenizer.json` + `tokenizer_config.json`, and chat templates.

    tok = Tokenizer.from_pretrained("path/to/model")
    ids = tok.encode("Hello")                       # list[int], BOS added if the model wants one
    tok.decode(ids, skip_special_tokens=True)
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    stream = tok.stream_decoder()                   # incremental detokenizer for generation

Encoding and decoding run in the Rust `tokenizers` library, exactly the pipeline that
`tokenizer.json` describes. Around it we replicate the few things transformers 5.x
adds on top (checked against transformers 5.23):

- special tokens named in `tokenizer_config.json` (bos/eos/pad/..., `added_tokens_decoder`,
  `extra_special_tokens`) are added to the backend when `tokenizer.json` lacks them;
- whether `encode` adds BOS/EOS is decided by `tokenizer.json`'s post-processor alone:
  transformers 5 drops `add_bos_token`/`add_eos_token` from `tokenizer_config.json` when a
  `tokenizer.json` exists (verified: even with no post-processor, no BOS is added);
- chat templates render in jinja2's `ImmutableSandboxedEnvironment` with the same options,
  filters and globals as `transformers.utils.chat_template_utils`, plus a budget that
  transformers does not have: range() and repetition caps, caps on format widths, string and
  output sizes, and a wall-clock limit (docs/security.md). A template that exceeds it, fails
  to parse or calls its own `raise_exception` gives a one-line `ChatTemplateError` naming it.

A Rust panic inside `tokenizers` (a pre-tokenizer regex that backtracks without end, say)
arrives as `pyo3_runtime.PanicException`, which is not an `Exception`; it is turned into a
`TokenizerError` naming the tokenizer at every call into the library.
"""
from __future__ import annotations

import copy
import ctypes
import functools
import json
import os
import re
import string
import threading
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken
from tokenizers import Tokenizer as BackendTokenizer

from .errors import is_rust_panic, load_json_file, open_regular_file

# The named special tokens transformers exposes as attributes and passes to chat templates.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                       "mask_token")
REPLACEMENT_CHAR = "\ufffd"  # what a UTF-8 decode with errors="replace" puts for broken bytes


class TokenizerError(ValueError):
    """A tokenizer folder that minilm cannot load (one-line message)."""


class TokenizerNotFoundError(TokenizerError, FileNotFoundError):
    pass


class ChatTemplateError(TokenizerError, jinja2.exceptions.TemplateError):
    """A chat template that cannot be rendered: names the template (still a jinja2 TemplateError)."""


class _RustPanicsAsErrors:
    """`with _RustPanicsAsErrors(name):` turns a Rust panic inside `tokenizers` into a TokenizerError."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, error, traceback):
        if error is not None and is_rust_panic(error):
            first_line = (str(error).splitlines() or ["panic"])[0][:200]
            raise TokenizerError(f"{self.name}: the tokenizers library failed ({first_line})") from None
        return False


class Tokenizer:
    def __init__(self, backend: BackendTokenizer, config: dict | None = None,
                 generation_config: dict | None = None, name_or_path: str = "",
                 chat_template_source: str | None = None):
        self.backend = backend
        self.config = dict(config or {})
        self.generation_config = dict(generation_config or {})
        self.name_or_path = name_or_path
        # Where the chat template came from, for error messages.
        self.chat_template_source = chat_template_source or os.path.join(name_or_path, "tokenizer_config.json")
        _check_tokenizer_config(self.config, os.path.join(name_or_path, "tokenizer_config.json"))
        self.special_tokens = _named_special_tokens(self.config)  # {"bos_token": "<s>", ...}
        self.chat_template = _chat_templates(self.config)  # str, {name: str} or None
        with _RustPanicsAsErrors(name_or_path or "tokenizer"):
            _add_missing_special_tokens(backend, self.config, self.special_tokens)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, folder: str) -> "Tokenizer":
        """Load `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` from a folder."""
        folder = os.fspath(folder)
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.lexists(path):
            raise TokenizerNotFoundError(
                f"{path} not found: minilm needs a Hugging Face fast-tokenizer file (tokenizer.json)")
        with open_regular_file(path, "tokenizer file", TokenizerError):   # refuses a FIFO or a folder
            pass
        try:
            with _RustPanicsAsErrors(path):
                backend = BackendTokenizer.from_file(path)
        except Exception as e:  # the Rust error text is multi-line; keep its first line
            raise TokenizerError(f"{path}: cannot parse: {(str(e).splitlines() or [''])[0][:200]}") from None
        config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        template_file = os.path.join(folder, "chat_template.jinja")
        source = None
        if os.path.lexists(template_file):
            # As in transformers: a separate template file wins over tokenizer_config.json.
            config["chat_template"] = _read_text(template_file, "chat template")
            source = template_file
        generation_config = _read_json(os.path.join(folder, "generation_config.json"))
        return cls(backend, config, generation_config, name_or_path=folder, chat_template_source=source)

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with _RustPanicsAsErrors(self.name_or_path or "tokenizer"):
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in (ids if hasattr(ids, "__iter__") else [ids])]  # lists, arrays, one id
        with _RustPanicsAsErrors(self.name_or_path or "tokenizer"):
            text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        # transformers skips this cleanup for BPE models (it would eat real spaces).
        if self.config.get("clean_up_tokenization_spaces") and self._model_type() != "BPE":
            text = clean_up_tokenization(text)
        return text

    def stream_decoder(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    # ------------------------------------------------------------------ special tokens

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id_of("bos_token")

    @property
    def eos_token_id(self) -> int | list[int] | None:
        """The id(s) that end generation.

        `generation_config.json`'s `eos_token_id` when the folder has one (a list for
        models with several end tokens, e.g. Llama 3 instruct), else the tokenizer's eos.
        """
        from_generation = self.generation_config.get("eos_token_id")
        return from_generation if from_generation is not None else self._id_of("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._id_of("unk_token")

    @property
    def add_bos_token(self) -> bool:
        """Whether encode(add_special_tokens=True) prepends BOS (tokenizer.json decides)."""
        first = self.backend.encode("", add_special_tokens=True).ids[:1]
        return self.bos_token_id is not None and first == [self.bos_token_id]

    @property
    def add_eos_token(self) -> bool:
        eos = self._id_of("eos_token")
        return eos is not None and self.backend.encode("", add_special_tokens=True).ids[-1:] == [eos]

    @property
    def vocab_size(self) -> int:
        """Base vocabulary size without added tokens, like transformers' `tokenizer.vocab_size`."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """All ids including added tokens, like `len(transformers_tokenizer)`."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    # ------------------------------------------------------------------ chat

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            **template_kwargs):
        """Render a conversation with the model's chat template (a str, or ids if tokenize=True).

        Same output as transformers' `apply_chat_template` for one conversation. The
        rendered text already holds BOS etc., so it is encoded without adding special tokens.
        """
        template = self.get_chat_template(chat_template, tools)
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, documents=documents,
                                    template_name=self._template_name(template, chat_template),
                                    **{**self.special_tokens, **template_kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def get_chat_template(self, chat_template: str | None = None, tools=None) -> str:
        """The template text: picks `default` (or `tool_use` with tools) from named templates."""
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template in templates:
                return templates[chat_template]
            if chat_template is not None:
                return chat_template
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ChatTemplateError(f"{self.name_or_path}: several chat templates and no 'default': "
                                    f"pass chat_template= one of {sorted(templates)}")
        if chat_template is not None:
            return chat_template
        if templates is None:
            raise ChatTemplateError(f"{self.name_or_path}: no chat template (tokenizer_config.json "
                                    "has no chat_template and there is no chat_template.jinja)")
        return templates

    # ------------------------------------------------------------------ helpers

    def _template_name(self, template: str, requested: str | None) -> str:
        """How errors name a template: its file, and which of several named ones."""
        templates = self.chat_template
        if isinstance(templates, dict):
            name = next((n for n, t in templates.items() if t == template), None)
            return f"{self.chat_template_source} (chat template {name!r})" if name else "chat_template argument"
        if requested is not None and template == requested and template != templates:
            return "chat_template argument"
        return f"{self.chat_template_source} (chat template)"

    def _id_of(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    def _model_type(self) -> str:
        return type(self.backend.model).__name__

    def __repr__(self) -> str:
        return f"Tokenizer({self.name_or_path!r}, {len(self)} tokens)"


class StreamDecoder:
    """Incremental detokenizer: feed generated ids one at a time, get printable text pieces.

    A token can end in the middle of a multi-byte character (one emoji is often 2-4
    byte-level tokens). Decoding it alone gives U+FFFD, so we hold text back while the
    decoded window ends with U+FFFD. Only a short window is re-decoded per step: the
    previous piece's tokens (`prefix`, so a decoder that treats the first token of a
    sequence specially does it there) plus the new ones.

    `"".join(pieces) + flush()` equals `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_start = 0  # ids[prefix_start:read_start] were already emitted (the context window)
        self.read_start = 0  # ids[read_start:] are not emitted yet

    def add(self, token_id: int) -> str:
        """Append one token; return the new text ('' while a character is still incomplete)."""
        self.ids.append(int(token_id))
        prefix_text, window_text = self._decode_window()
        if len(window_text) <= len(prefix_text) or window_text.endswith(REPLACEMENT_CHAR):
            return ""
        self.prefix_start, self.read_start = self.read_start, len(self.ids)
        return window_text[len(prefix_text):]

    __call__ = add

    def flush(self) -> str:
        """Whatever is still held back at the end (may contain U+FFFD for truly broken bytes)."""
        prefix_text, window_text = self._decode_window()
        self.prefix_start = self.read_start = len(self.ids)
        return window_text[len(prefix_text):]

    def _decode_window(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_start:self.read_start], self.skip_special_tokens)
        window_text = decode(self.ids[self.prefix_start:], self.skip_special_tokens)
        return prefix_text, window_text


# ---------------------------------------------------------------------- tokenizer_config.json


def _read_json(path: str) -> dict:
    """An optional JSON object file: {} when absent, TokenizerError naming it when malformed."""
    if not os.path.lexists(path):
        return {}
    return load_json_file(path, os.path.basename(path), TokenizerError)


def _read_text(path: str, what: str) -> str:
    with open_regular_file(path, what, TokenizerError) as f:
        raw = f.read(TEMPLATE_MAX_CHARS + 1)
    if len(raw) > TEMPLATE_MAX_CHARS:
        raise TokenizerError(f"{path}: {what} is larger than {TEMPLATE_MAX_CHARS} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None


def _check_tokenizer_config(config: dict, source: str) -> None:
    """The shapes of tokenizer_config.json's values minilm reads, so a wrong one is named here
    rather than failing as a KeyError or TypeError later."""
    for name in SPECIAL_TOKEN_NAMES:
        if _token_content(config.get(name)) is None and config.get(name) is not None:
            raise TokenizerError(f"{source}: {name}={config[name]!r} must be a string or an AddedToken object")
    decoder = config.get("added_tokens_decoder", {})
    flags = ("single_word", "lstrip", "rstrip", "normalized", "special")
    if not isinstance(decoder, dict) or not all(
            str(key).isdigit() and isinstance(spec, dict) and isinstance(spec.get("content"), str)
            and all(isinstance(spec.get(flag, False), bool) for flag in flags) for key, spec in decoder.items()):
        raise TokenizerError(f"{source}: added_tokens_decoder must map token ids to objects with a 'content' "
                             "string and true/false flags")
    for key in ("extra_special_tokens", "additional_special_tokens"):
        extra = config.get(key)
        if extra is not None and not isinstance(extra, (dict, list)):
            raise TokenizerError(f"{source}: {key} must be a list or an object, got {type(extra).__name__}")
    template = config.get("chat_template")
    named_ok = isinstance(template, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in template)
    if template is not None and not isinstance(template, str) and not named_ok:
        raise TokenizerError(f"{source}: chat_template must be a string or a list of {{name, template}} objects")


def _token_content(value) -> str | None:
    """A special token is a string, or a serialized AddedToken dict with 'content'."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _named_special_tokens(config: dict) -> dict[str, str]:
    """{"bos_token": "<s>", ...} plus model-specific named tokens (e.g. "image_token")."""
    named = {name: _token_content(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
    extra = config.get("extra_special_tokens")
    if isinstance(extra, dict):  # transformers 5.x: named extra tokens are template variables too
        named.update({name: _token_content(value) for name, value in extra.items()})
    return {name: token for name, token in named.items() if token is not None}


def _extra_special_tokens(config: dict) -> list[str]:
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    values = extra.values() if isinstance(extra, dict) else extra
    return [t for t in map(_token_content, values) if t is not None]


def _add_missing_special_tokens(backend: BackendTokenizer, config: dict, named: dict) -> None:
    """Add the config's special tokens that tokenizer.json does not list, as transformers does.

    Without this, a token such as "<|im_end|>" that is only in the base vocab would be
    split into pieces when it appears in text, and kept by skip_special_tokens.
    """
    present = {token.content for token in backend.get_added_tokens_decoder().values()}
    to_add = []
    for _, spec in sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0])):
        if spec["content"] not in present:
            to_add.append(AddedToken(spec["content"], single_word=spec.get("single_word", False),
                                     lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                                     normalized=spec.get("normalized", False),
                                     special=spec.get("special", False)))
            present.add(spec["content"])
    for token in [*named.values(), *_extra_special_tokens(config)]:
        if token not in present:
            to_add.append(AddedToken(token, special=True, normalized=False))
            present.add(token)
    if to_add:
        backend.add_tokens(to_add)


def _chat_templates(config: dict):
    """tokenizer_config's chat_template: a string, or the hub's list of {name, template} dicts."""
    template = config.get("chat_template")
    if isinstance(template, list):
        return {item["name"]: item["template"] for item in template}
    return template


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (only applied to non-BPE models that ask for it)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                          (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


# ---------------------------------------------------------------------- chat templates

# The render budget. transformers' sandbox has none (jinja2 alone caps range() at 100000 items),
# so a template could loop for hours or build gigabytes; these caps are far above what any
# real chat template needs. Module-level so an application (or a test) can tighten them.
TEMPLATE_MAX_RANGE = 10_000          # items in one range()
TEMPLATE_MAX_CHARS = 1 << 24         # characters of output, and of any one string or list built on the way
TEMPLATE_MAX_WIDTH = 4096            # a format width or precision, an indent, a tojson indent
TEMPLATE_MAX_INT_BITS = 1 << 16      # integers built with * and **
TEMPLATE_TIME_LIMIT_S = 10.0         # wall-clock seconds for one render


class _TemplateBudgetError(jinja2.exceptions.SecurityError):
    """A chat template went over the render budget."""


class _TemplateRaised(jinja2.exceptions.TemplateError):
    """The template's own raise_exception(message)."""


class _RenderTimeout(BaseException):
    """Raised asynchronously in the rendering thread when the time budget is spent (a BaseException,
    so that no `except Exception` inside jinja2 swallows it)."""


class _Watchdog:
    """Raises _RenderTimeout in the calling thread after `seconds`, unless the block ends first.

    CPython's PyThreadState_SetAsyncExc interrupts any pure-Python loop in any thread (SIGALRM
    would work in the main thread only and collide with an application's own alarms). The lock
    makes "fire" and "finish" exclusive, and a timeout that fired but was not yet delivered is
    withdrawn on exit, so it can never surface after the render.
    """

    def __init__(self, seconds: float):
        self.thread_id = threading.get_ident()
        self.lock = threading.Lock()
        self.armed, self.fired = True, False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        with self.lock:
            if self.armed:
                self.fired = True
                _set_async_exception(self.thread_id, _RenderTimeout)

    def __enter__(self):
        if hasattr(ctypes, "pythonapi"):      # not CPython: no time limit, the size caps still apply
            self.timer.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.timer.cancel()
        with self.lock:
            self.armed = False
            if self.fired:
                _set_async_exception(self.thread_id, None)
        return False


def _set_async_exception(thread_id: int, exception) -> None:
    # None clears a pending exception (the C API takes NULL).
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               None if exception is None else ctypes.py_object(exception))


def _over_budget(what: str, value, limit) -> None:
    raise _TemplateBudgetError(f"{what} {value} is over the chat-template limit of {limit}")


def _check_size(value) -> None:
    """Strings and lists a template builds stay under TEMPLATE_MAX_CHARS."""
    if isinstance(value, (str, list, tuple)) and len(value) > TEMPLATE_MAX_CHARS:
        _over_budget(f"a {type(value).__name__} of length", len(value), TEMPLATE_MAX_CHARS)


def _check_int_bits(bits: int) -> None:
    if bits > TEMPLATE_MAX_INT_BITS:
        _over_budget("an integer of bit length", bits, TEMPLATE_MAX_INT_BITS)


def _is_int(value) -> bool:
    return isinstance(value, int)


def _check_repeat(left, right) -> None:
    """`s * n` and `n * s` (strings, lists) and int * int, before the result is built."""
    if _is_int(left) and _is_int(right):
        _check_int_bits(left.bit_length() + right.bit_length())
        return
    sequence, count = (left, right) if _is_int(right) else (right, left)
    if isinstance(sequence, (str, list, tuple)) and _is_int(count):
        _check_size_of(len(sequence) * max(count, 0))


def _check_size_of(length: int) -> None:
    if length > TEMPLATE_MAX_CHARS:
        _over_budget("a result of length", length, TEMPLATE_MAX_CHARS)


def _check_power(base, exponent) -> None:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        _check_int_bits(exponent * base.bit_length())


def _check_width(number: str | int) -> None:
    if int(number) > TEMPLATE_MAX_WIDTH:
        _over_budget("a width or precision of", int(number), TEMPLATE_MAX_WIDTH)


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(template: str) -> None:
    """`'%999999999s' % x` would build a gigabyte: bound every width and precision first."""
    for width, precision in _PRINTF_SPEC.findall(template):
        for number in (width, precision):
            if number == "*":
                raise _TemplateBudgetError("'*' widths are not allowed in chat templates")
            if number:
                _check_width(number)


def _check_format_string(template: str) -> None:
    """The same for str.format: '{:999999999}' and '{:.999999999f}'."""
    for _, _, spec, _ in string.Formatter().parse(template):
        if spec and "{" in spec:
            raise _TemplateBudgetError("nested format specifications are not allowed in chat templates")
        for number in re.findall(r"\d+", spec or ""):
            _check_width(number)


# str methods whose result can be much longer than their inputs: name -> result length bound.
_STR_METHOD_BOUNDS = {
    "center": lambda s, width=0, *_: max(len(s), width),
    "ljust": lambda s, width=0, *_: max(len(s), width),
    "rjust": lambda s, width=0, *_: max(len(s), width),
    "zfill": lambda s, width=0, *_: max(len(s), width),
    "expandtabs": lambda s, tabsize=8, *_: len(s) * max(tabsize, 1),
    "replace": lambda s, old="", new="", *_: len(s) + (s.count(old) if old else len(s) + 1) * len(new),
    "join": lambda s, items=(), *_: (len(s) * len(items) + sum(len(i) for i in items if isinstance(i, str))
                                     if isinstance(items, (list, tuple)) else 0),
}


def _check_call(function, args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):   # e.g. a recursive macro doubling its argument
        _check_size(value)
    bound = _STR_METHOD_BOUNDS.get(getattr(function, "__name__", ""))
    owner = getattr(function, "__self__", None)
    if bound is not None and isinstance(owner, str) and all(isinstance(a, (int, str, list, tuple)) for a in args):
        try:
            length = bound(owner, *args)
        except TypeError:                     # wrong argument types: the call itself will say so
            return
        _check_size_of(length)


def _check_filter(name: str, value, args: tuple, kwargs: dict) -> None:
    """The built-in filters whose size argument can blow up the output."""
    if name == "format" and isinstance(value, str):
        _check_printf(value)
    elif name == "center":
        width = (args or (kwargs.get("width", 80),))[0]
        if _is_int(width):
            _check_size_of(max(len(str(value)), width))
    elif name == "indent":
        width = (args or (kwargs.get("width", 4),))[0]
        width = len(width) if isinstance(width, str) else width
        if _is_int(width):
            _check_width(width)
            _check_size_of(len(str(value)) + (str(value).count("\n") + 1) * width)
    elif name in ("batch", "slice"):
        count = (args or (kwargs.get("linecount", kwargs.get("slices", 1)),))[0]
        if _is_int(count) and count > TEMPLATE_MAX_RANGE:
            _over_budget(f"{name} size", count, TEMPLATE_MAX_RANGE)
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        _check_call(value.replace, args, {})
    elif name == "tojson":
        indent = kwargs.get("indent", args[1] if len(args) > 1 else None)
        if _is_int(indent):
            _check_width(indent)


def _budgeted_filter(name: str, function):
    """A jinja2 filter with _check_filter before it and _check_size on its result."""
    passes_context = getattr(function, "jinja_pass_arg", None) is not None

    @functools.wraps(function)            # keeps jinja_pass_arg, so jinja still passes the context
    def filtered(*args, **kwargs):
        value_and_args = args[1:] if passes_context else args
        if value_and_args:
            _check_filter(name, value_and_args[0], value_and_args[1:], kwargs)
        result = function(*args, **kwargs)
        _check_size(result)
        return result
    return filtered


def _range(*args) -> range:
    items = range(*args)
    if len(items) > TEMPLATE_MAX_RANGE:
        _over_budget("range() of", len(items), TEMPLATE_MAX_RANGE)
    return items


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox plus the render budget on operators, calls and str.format."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        result = super().call_binop(context, operator, left, right)
        _check_size(result)
        return result

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's own signature)
        _check_call(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _check_size(result)
        return result

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        template = value.__self__

        def checked_format(*args, **kwargs):
            _check_format_string(template)
            result = wrapper(*args, **kwargs)
            _check_size(result)
            return result
        return checked_format


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks
    in transformers; for rendering it is a no-op, but templates using it must still parse."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


class _TemplateDict:
    # `dict(...)` in templates without exposing the dict type itself to the sandbox.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Like transformers: no underscore attributes, so templates can't reach CPython internals.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _TemplateNamespace._check_name(name)
            _check_size(value)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        _check_size(value)                    # `{% set ns.s = ns.s ~ ns.s %}` doubles in a loop
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")


def _raise_exception(message):
    raise _TemplateRaised(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters (<, >, &), which chat templates must not do.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """The jinja environment transformers renders chat templates in (same options and globals),
    with the render budget on top. Raises jinja2.TemplateSyntaxError for a template that does not parse."""
    env = _BudgetedSandbox(trim_blocks=True, lstrip_blocks=True,
                           extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters = {name: _budgeted_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    env.globals["range"] = _range
    del env.globals["lipsum"]                 # lipsum(10**9) is a one-call hang; no chat template uses it
    return env.from_string(template)


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _prepare_messages(messages: list[dict]) -> list[dict]:
    """What transformers hands the template: a copy, keys with None values dropped, and a
    message's reasoning aliased under `thinking` and `reasoning_content`."""
    prepared = []
    for message in copy.deepcopy(list(messages)):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"chat messages must be dicts, got {message!r}")
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in REASONING_FIELDS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = False,
                         tools: list[dict] | None = None, documents: list[dict] | None = None,
                         template_name: str = "chat template", **variables) -> str:
    """Render one conversation; `variables` are the special tokens and any extra template kwargs.

    Any failure is a one-line ChatTemplateError naming `template_name`: a syntax error, the
    template's own raise_exception, a sandbox or budget violation, or a render over the time limit.
    """
    if not messages:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation")
    try:
        compiled = compile_chat_template(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"{template_name}: syntax error on line {e.lineno}: {e.message}") from None
    context = dict(messages=_prepare_messages(messages), tools=copy.deepcopy(tools),
                   documents=copy.deepcopy(documents), add_generation_prompt=add_generation_prompt, **variables)
    try:
        with _Watchdog(TEMPLATE_TIME_LIMIT_S):
            return _join_within_budget(compiled.generate(**context))
    except _RenderTimeout:
        raise ChatTemplateError(f"{template_name}: rendering took longer than the chat-template limit of "
                                f"{TEMPLATE_TIME_LIMIT_S:g} s") from None
    except _TemplateRaised as e:
        raise ChatTemplateError(f"{template_name} refused the conversation: {_one_line(e.message)}") from None
    except _TemplateBudgetError as e:
        raise ChatTemplateError(f"{template_name}: {_one_line(e.message)}") from None
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"{template_name}: {type(e).__name__}: {_one_line(e.message)}") from None
    except (RecursionError, MemoryError) as e:
        raise ChatTemplateError(f"{template_name}: {type(e).__name__} while rendering") from None
    except Exception as e:  # a TypeError etc. raised by the template's own expressions
        raise ChatTemplateError(f"{template_name}: {type(e).__name__}: {_one_line(str(e))}") from None


def _join_within_budget(pieces) -> str:
    """The rendered text, stopping as soon as it passes TEMPLATE_MAX_CHARS."""
    out, length = [], 0
    for piece in pieces:
        length += len(piece)
        if length > TEMPLATE_MAX_CHARS:
            _over_budget("the output, at least", length, TEMPLATE_MAX_CHARS)
        out.append(piece)
    return "".join(out)


def _one_line(message) -> str:
    return " ".join(str(message or "").split())[:300]
