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
  filters and globals as `transformers.utils.chat_template_utils`.
"""
from __future__ import annotations

import copy
import json
import os
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken
from tokenizers import Tokenizer as BackendTokenizer

# The named special tokens transformers exposes as attributes and passes to chat templates.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                       "mask_token")
REPLACEMENT_CHAR = "\ufffd"  # what a UTF-8 decode with errors="replace" puts for broken bytes


class TokenizerError(ValueError):
    """A tokenizer folder that minilm cannot load (one-line message)."""


class TokenizerNotFoundError(TokenizerError, FileNotFoundError):
    pass


class ChatTemplateError(TokenizerError):
    pass


class Tokenizer:
    def __init__(self, backend: BackendTokenizer, config: dict | None = None,
                 generation_config: dict | None = None, name_or_path: str = ""):
        self.backend = backend
        self.config = dict(config or {})
        self.generation_config = dict(generation_config or {})
        self.name_or_path = name_or_path
        self.special_tokens = _named_special_tokens(self.config)  # {"bos_token": "<s>", ...}
        self.chat_template = _chat_templates(self.config)  # str, {name: str} or None
        _add_missing_special_tokens(backend, self.config, self.special_tokens)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, folder: str) -> "Tokenizer":
        """Load `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` from a folder."""
        folder = os.fspath(folder)
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise TokenizerNotFoundError(
                f"{path} not found: minilm needs a Hugging Face fast-tokenizer file (tokenizer.json)")
        try:
            backend = BackendTokenizer.from_file(path)
        except Exception as e:  # the Rust error text is multi-line; keep its first line
            raise TokenizerError(f"{path}: cannot parse: {str(e).splitlines()[0]}") from None
        config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        template_file = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(template_file):
            # As in transformers: a separate template file wins over tokenizer_config.json.
            with open(template_file, encoding="utf-8") as f:
                config["chat_template"] = f.read()
        generation_config = _read_json(os.path.join(folder, "generation_config.json"))
        return cls(backend, config, generation_config, name_or_path=folder)

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in (ids if hasattr(ids, "__iter__") else [ids])]  # lists, arrays, one id
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
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: invalid JSON ({e})") from None


def _token_content(value) -> str | None:
    """A special token is a string, or a serialized AddedToken dict with 'content'."""
    if isinstance(value, dict):
        return value.get("content")
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
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters (<, >, &), which chat templates must not do.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


@lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """The jinja environment transformers renders chat templates in (same options and globals)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
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
                         **variables) -> str:
    """Render one conversation; `variables` are the special tokens and any extra template kwargs."""
    if not messages:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation")
    return compile_chat_template(template).render(
        messages=_prepare_messages(messages), tools=copy.deepcopy(tools),
        documents=copy.deepcopy(documents), add_generation_prompt=add_generation_prompt, **variables)
