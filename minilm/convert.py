"""Convert a GGUF (llama.cpp's format) into a Hugging Face checkpoint folder.

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2/")

Architectures: those of the families in minilm/models that name one (`gguf_architecture`):
"llama", "command-r" (Cohere) and "cohere2" (SUPPORTED_ARCHITECTURES). It writes

    config.json              the family's HF config (LlamaForCausalLM, CohereForCausalLM,
                             Cohere2ForCausalLM) from the GGUF metadata
    generation_config.json   bos / eos / pad ids (+ the model card's sampling settings, for models listed
                             in CARD_SAMPLING)
    model.safetensors        every tensor dequantized to float32, under its HF name
    tokenizer.json           byte-level BPE rebuilt from the GGUF vocab and merges
    tokenizer_config.json    special tokens and the chat template
    minilm-conversion.json   what was converted, by which converter version

The GGUF is read by minilm.gguf_file, the reader `minilm.load(x.gguf)` uses too: GGUFFile
parses the header (every count and offset checked against the file's size; about a second
for SmolLM2's 49k-token vocabulary), gguf_config maps the metadata to config.json,
gguf_tensors maps llama.cpp's tensor names to HF names and checks them against the family,
and decoded() dequantizes with gguf-py and undoes llama.cpp's q/k row permutation where the
family has one (llama: `unpermute_rope_rows`, exactly as transformers' own GGUF loader does,
so a llama folder equals `AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`).
Tokens outside the byte-level alphabet are respelled in it, control tokens become special
added tokens, and the pre-tokenizer is picked from `tokenizer.ggml.pre`.

The folder is written under a temporary sibling name and renamed at the end, so an
interrupted conversion never leaves a folder that looks complete. SIGTERM unwinds like
Ctrl-C (the staging folder is removed, then the process dies of SIGTERM as before), and
staging folders of processes that died without unwinding (SIGKILL, power loss) are removed
by the next conversion into the same place. An existing folder is replaced only if minilm
made it (it holds the completion marker): `overwrite=True` never deletes a user's folder.

Untrusted input is checked before anything is written: the header parse, a config that
parse_config accepts, tensors that are exactly those the config implies (a `block_count`
larger than the blocks present fails the conversion rather than producing a folder that can
never load) in types gguf-py decodes, and a tokenizer that builds. Every refusal is one
ConversionError line naming the file and the key or tensor.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import threading
import time

from .config import ConfigError, parse_config
from .errors import is_rust_panic, regular_file_size
from .gguf_file import (GGUFError, GGUFFile, check_decodable, decoded, family_for_architecture, gguf_architectures,
                        gguf_config, gguf_tensors)
from .notices import notice
from .progress import progress_bar
from .safetensors_file import SafetensorsWriter

SUPPORTED_ARCHITECTURES = gguf_architectures()   # ("llama", "command-r", "cohere2")
CONVERTER_VERSION = 3  # 2: the marker holds file sizes, digests and the GGUF identity; 3: generation_config.json carries the model card's sampling
MARKER_FILE = "minilm-conversion.json"  # written last, inside the folder that gets renamed into place
STAGING_MARKER = ".minilm-staging"       # written first into a staging folder: what proves it is minilm's
MARKED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json")
DIGEST_BLOCK = 1 << 16         # digests hash the first and last 64 KiB (usually a whole safetensors header)
STALE_AFTER_S = 60             # a dead process's staging folder untouched this long is removed


class ConversionError(ValueError):
    """A GGUF that minilm cannot convert (one-line message)."""


class GGUFNotFoundError(ConversionError, FileNotFoundError):
    pass


class NotAGGUFError(ConversionError):
    pass


class UnsupportedGGUFError(ConversionError):
    """Valid GGUF, but an architecture, tensor, quantization or tokenizer we do not handle."""


# ---------------------------------------------------------------------- public API


def convert_gguf(gguf_path: str, out_dir: str, progress: bool = True, overwrite: bool = False,
                 weights: bool = True) -> str:
    """Convert a GGUF of a supported architecture into an HF folder at `out_dir` (float32
    safetensors); returns out_dir.

    overwrite=True replaces an earlier conversion (a folder holding minilm's marker); any other
    existing path is refused, never deleted.
    weights=False writes all but model.safetensors (config, generation config, and the tokenizer
    when the GGUF has one): the side folder of a GGUF whose blocks minilm runs as stored.
    """
    reader = open_gguf(gguf_path)
    gguf_path = reader.path
    config, tensors = read_model(reader)
    tokenizer, no_tokenizer = None, None
    try:
        with _untrusted_metadata(gguf_path, "tokenizer"):
            tokenizer = build_tokenizer(reader.metadata, gguf_path)
    except ConversionError as e:
        if weights:
            raise
        no_tokenizer = str(e)     # the blocks still run (bench, minilm.load); the CLI names this reason

    out_dir = os.path.abspath(os.fspath(out_dir))
    check_replaceable(out_dir, overwrite)
    remove_stale_siblings(out_dir)
    try:
        with _sigterm_unwinds(), _staging_dir(out_dir) as staging:
            _write_json(os.path.join(staging, "config.json"), config)
            _write_json(os.path.join(staging, "generation_config.json"), generation_config(config, gguf_path))
            if tokenizer is not None:
                write_tokenizer_files(tokenizer, reader.metadata, staging)
            if weights:
                announce_conversion(gguf_path, tensors, out_dir, progress)
                with progress_bar(len(tensors), f"converting {os.path.basename(gguf_path)}",
                                  enabled=progress) as bar, _gguf_errors(gguf_path):
                    write_safetensors(os.path.join(staging, "model.safetensors"), tensors, on_tensor=bar.update)
            marker = conversion_marker(gguf_path, len(tensors) if weights else 0, staging)
            _write_json(os.path.join(staging, MARKER_FILE), marker | ({"no_tokenizer": no_tokenizer}
                                                                     if no_tokenizer else {}))
            _move_into_place(staging, out_dir, overwrite)
    except OSError as e:  # a full disk, a file-size limit, no permission: name the folder
        raise ConversionError(f"{out_dir}: writing the conversion failed ({e.strerror or e})") from None
    return out_dir


FLOAT32_WRITE_RATE = 50e6    # bytes/s of float32 output, decoding included (2-core VM, under load: 40-75 MB/s)


def announce_conversion(gguf_path: str, tensors: list, out_dir: str, enabled: bool = True) -> None:
    """One line before a float32 copy that takes seconds (the bar after it only redraws on a terminal)."""
    nbytes = 4 * sum(math.prod(t.shape) for t in tensors)
    seconds = nbytes / FLOAT32_WRITE_RATE
    if enabled and seconds > 2:
        notice(f"converting {os.path.basename(gguf_path)} into a float32 copy of {nbytes / 2**20:,.0f} MiB in "
               f"{out_dir}", f"once, about {seconds:.0f} s")


def check_replaceable(out_dir: str, overwrite: bool) -> None:
    """An existing out_dir may be replaced only when asked to and only if minilm made it."""
    if not os.path.lexists(out_dir):
        return
    if not is_minilm_folder(out_dir):
        raise ConversionError(f"{out_dir} already exists and is not a minilm conversion (no {MARKER_FILE}); "
                              "refusing to replace it: choose another output folder or remove it yourself")
    if not overwrite:
        raise ConversionError(f"{out_dir} already exists (pass --overwrite, or overwrite=True, to replace "
                              "the earlier conversion)")


def is_minilm_folder(folder: str) -> bool:
    """True if `folder` is a directory minilm wrote: only conversions hold an entry named like
    the marker (even a damaged marker, which is why its type and content are not required)."""
    return os.path.isdir(folder) and os.path.lexists(os.path.join(folder, MARKER_FILE))


def convert_gguf_tokenizer(gguf_path: str, out_dir: str) -> str:
    """Only tokenizer.json + tokenizer_config.json (seconds instead of a full conversion)."""
    _, metadata = read_gguf(gguf_path)
    check_architecture(metadata, gguf_path)
    with _untrusted_metadata(gguf_path, "tokenizer"):
        tokenizer = build_tokenizer(metadata, gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    write_tokenizer_files(tokenizer, metadata, out_dir)
    return out_dir


def conversion_marker(gguf_path: str, n_tensors: int, folder: str) -> dict:
    """The completion marker: what was converted (the GGUF's identity) and proof of what was
    written (size and digest of every file), which `minilm.default_model` checks on reuse."""
    return {"converter": "minilm.convert", "converter_version": CONVERTER_VERSION,
            "source_file": os.path.basename(gguf_path), "source": gguf_identity(gguf_path), "tensors": n_tensors,
            "files": {name: file_digest(os.path.join(folder, name)) for name in MARKED_FILES
                      if os.path.exists(os.path.join(folder, name))}}


def file_digest(path: str) -> dict:
    """{"size", "sha256"} of a file, the hash over its size, first and last DIGEST_BLOCK bytes:
    a few milliseconds even for a 30 GB file, and any truncation or rewrite of a header shows."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(f.read(DIGEST_BLOCK))
        if size > DIGEST_BLOCK:
            f.seek(max(DIGEST_BLOCK, size - DIGEST_BLOCK))
            digest.update(f.read(DIGEST_BLOCK))
    return {"size": size, "sha256": digest.hexdigest()}


def gguf_identity(gguf_path: str) -> dict:
    """Which GGUF this is, independent of its path and name: size, modification time and
    file_digest. Two paths to the same file share it; a changed or replaced file does not."""
    return {"mtime_ns": os.stat(gguf_path).st_mtime_ns, **file_digest(gguf_path)}


# ---------------------------------------------------------------------- reading the GGUF (minilm.gguf_file)


def open_gguf(gguf_path: str) -> GGUFFile:
    """The parsed header (metadata and tensor table) of a regular file, or a ConversionError naming
    the file: never another exception, whatever the bytes (GGUFFile bounds its work by the file's size)."""
    gguf_path = os.fspath(gguf_path)
    if not os.path.lexists(gguf_path):
        raise GGUFNotFoundError(f"{gguf_path}: file not found")
    regular_file_size(gguf_path, "GGUF file", NotAGGUFError)
    with _gguf_errors(gguf_path, NotAGGUFError):
        return GGUFFile(gguf_path)


def read_gguf(gguf_path: str) -> tuple:
    """(reader, metadata) of a GGUF, or a ConversionError naming the file: never another exception."""
    reader = open_gguf(gguf_path)
    return reader, reader.metadata


def check_architecture(metadata: dict, gguf_path: str) -> None:
    """general.architecture is one of SUPPORTED_ARCHITECTURES (the error lists them)."""
    with _gguf_errors(gguf_path):
        family_for_architecture(metadata.get("general.architecture"))


def read_model(reader: GGUFFile) -> tuple[dict, list]:
    """(config.json dict, [GGUFTensor] under HF names), both checked before anything is written:
    the config must parse, the tensors must be exactly the family's (gguf_tensors compares the
    block count with the blocks present before it builds any per-layer table) and decodable."""
    path = reader.path
    check_architecture(reader.metadata, path)
    with _untrusted_metadata(path, "model"):
        config = gguf_config(reader)
    try:
        parsed = parse_config(config, source=f"{path}: metadata")
    except ConfigError as e:
        raise UnsupportedGGUFError(str(e)) from None
    with _untrusted_metadata(path, "tensor"):
        tensors = list(gguf_tensors(reader, parsed).values())
        check_decodable(tensors)
    return config, tensors


def _naming(gguf_path: str, error: BaseException) -> str:
    """The error's message, the file named once at its front."""
    message = str(error)
    return message if message.startswith(gguf_path) else f"{gguf_path}: {message}"


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:200]


@contextlib.contextmanager
def _gguf_errors(gguf_path: str, error: type = None):
    """gguf_file's GGUFErrors (a corrupt header, a missing key or tensor, a wrong shape, an undecodable
    type, NaN weights) become `error` (UnsupportedGGUFError); every ConversionError names the file first."""
    try:
        yield
    except ConversionError as e:
        raise type(e)(_naming(gguf_path, e)) from None
    except GGUFError as e:
        raise (error or UnsupportedGGUFError)(_naming(gguf_path, e)) from None


@contextlib.contextmanager
def _untrusted_metadata(gguf_path: str, what: str):
    """Metadata values of the wrong type (a string where a count belongs, ...) surface as arbitrary
    Python errors, or as Rust panics in `tokenizers`: each becomes one UnsupportedGGUFError."""
    try:
        with _gguf_errors(gguf_path):
            yield
    except ConversionError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise UnsupportedGGUFError(f"{gguf_path}: malformed {what} metadata ({type(e).__name__}: "
                                   f"{_first_line(e)})") from None
    except BaseException as e:
        if is_rust_panic(e):
            raise UnsupportedGGUFError(f"{gguf_path}: malformed {what} metadata (tokenizers failed: "
                                       f"{_first_line(e)})") from None
        raise


# ---------------------------------------------------------------------- generation_config.json

# A GGUF carries no sampling settings; for the default model (by file name, before the quantization suffix)
# they are the ones its model card samples with: HuggingFaceTB/SmolLM2-135M-Instruct's card calls
# model.generate(..., temperature=0.2, top_p=0.9, do_sample=True).
CARD_SAMPLING = {"SmolLM2-135M-Instruct": {"do_sample": True, "temperature": 0.2, "top_p": 0.9}}


def generation_config(config: dict, gguf_path: str = "") -> dict:
    """generation_config.json: bos / eos / pad ids, and the model card's sampling settings if known."""
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    model_name = os.path.basename(gguf_path).split(".")[0]
    return {**ids, **CARD_SAMPLING.get(model_name, {})}


# ---------------------------------------------------------------------- safetensors


def write_safetensors(path: str, tensors: list, on_tensor=None) -> None:
    """Stream float32 tensors (gguf_file.GGUFTensor) into a .safetensors file, one tensor in memory at
    a time. A tied LM head is not among them (gguf_tensors leaves it out, as save_pretrained does)."""
    with SafetensorsWriter(path, {t.hf_name: ("F32", t.shape) for t in tensors}) as out:
        for t in tensors:
            out.write(t.hf_name, decoded(t))
            if on_tensor:
                on_tensor(1)


# ---------------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


# Pre-tokenizer split regexes by `tokenizer.ggml.pre` (from transformers 5.23's GGUF loader).
# Types not listed (e.g. SmolLM2's "smollm") use the GPT-2 regex built into ByteLevel.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"], _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
}
CONTROL_TOKEN_TYPE, USER_DEFINED_TOKEN_TYPE = 3, 4  # llama.cpp's token types


def build_tokenizer(metadata: dict, gguf_path: str = ""):
    """A `tokenizers.Tokenizer` equal to what transformers builds from the same GGUF."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedGGUFError(f"{gguf_path}: unsupported tokenizer model {model!r} "
                                   "(supported: 'gpt2', byte-level BPE)")
    tokens = metadata["tokenizer.ggml.tokens"]
    token_types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    byte_chars = bytes_to_unicode()
    alphabet = set(byte_chars.values())

    def spelled(token: str) -> str:  # a token written in raw UTF-8 gets the byte-level spelling
        return token if set(token) <= alphabet else "".join(byte_chars[b] for b in token.encode("utf-8"))

    vocab = {spelled(token): index for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ")) for merge in metadata.get("tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(metadata.get("tokenizer.ggml.pre"))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|> ...) match whole and count as special. One spelled outside
    # the byte alphabet is a llama.cpp mislabel; transformers skips those, so do we.
    control = [AddedToken(token, normalized=False, special=True)
               for token, kind in zip(tokens, token_types)
               if kind == CONTROL_TOKEN_TYPE and set(token) <= alphabet]
    tokenizer.add_special_tokens(control)
    known = tokenizer.get_vocab()
    user_defined = [AddedToken(token, normalized=False, special=False)
                    for token, kind in zip(tokens, token_types)
                    if kind == USER_DEFINED_TOKEN_TYPE and token in known]
    tokenizer.add_tokens(user_defined)
    named = _special_token_strings(metadata)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in named.values()])
    tokenizer.post_processor = _bos_eos_post_processor(metadata, named, tokenizer)
    return tokenizer


def _special_token_strings(metadata: dict) -> dict[str, str]:
    """{"bos_token": "<|im_start|>", ...} from the GGUF's special token ids."""
    tokens = metadata["tokenizer.ggml.tokens"]
    ids = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
           "pad_token": "padding_token_id"}
    named = {}
    for name, key in ids.items():
        index = metadata.get(f"tokenizer.ggml.{key}")
        if index is not None and 0 <= index < len(tokens):
            named[name] = tokens[index]
    return named


def _bos_eos_post_processor(metadata: dict, named: dict, tokenizer):
    # tokenizer.json's post-processor decides whether encode() adds BOS/EOS (transformers 5
    # ignores add_bos_token in tokenizer_config.json when tokenizer.json has one).
    from tokenizers import processors

    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and "bos_token" in named
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and "eos_token" in named
    bos, eos = named.get("bos_token"), named.get("eos_token")
    single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
    pair = " ".join([single] + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else []))
    special = [(t, tokenizer.token_to_id(t)) for t, wanted in ((bos, add_bos), (eos, add_eos)) if wanted]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_config(metadata: dict) -> dict:
    config = {
        # PreTrainedTokenizerFast loads tokenizer.json as-is in transformers 4.x and 5.x.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_token_strings(metadata),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": metadata.get(f"{metadata.get('general.architecture')}.context_length"),
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return {k: v for k, v in config.items() if v is not None}


def write_tokenizer_files(tokenizer, metadata: dict, out_dir: str) -> None:
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config(metadata))


# ---------------------------------------------------------------------- files


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


class _staging_dir:
    """A temporary sibling of `out_dir` (same filesystem, so the final rename is atomic),
    removed again if anything fails before it is moved into place."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def __enter__(self) -> str:
        self.path = _unique_sibling(self.out_dir, "partial")
        os.makedirs(self.path)  # plain mkdir (not mkdtemp's 0700) so the result has normal permissions
        open(os.path.join(self.path, STAGING_MARKER), "w").close()    # before anything else is written
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # no-op after a successful move


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread was, so `with` blocks unwind."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM during the block cleans up like Ctrl-C, then the process dies of SIGTERM as it would
    have. Only where Python lets us (the main thread) and only over the default action: an
    application's own SIGTERM handler is left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def unwind(signum, frame):
        raise _Terminated
    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)          # the exit status says "killed by SIGTERM"
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _move_into_place(staging: str, out_dir: str, overwrite: bool) -> None:
    """Rename the finished staging folder to out_dir. A path that appeared at out_dir meanwhile (a folder
    of the user's, a concurrent conversion that finished first) is replaced only with overwrite, and only
    if the folder actually moved aside holds minilm's marker: the check is made on what was moved, so
    nothing swapped in after an earlier check can be deleted. Otherwise it is left as it is."""
    os.unlink(os.path.join(staging, STAGING_MARKER))                  # the conversion marker names it now
    try:
        _rename_no_replace(staging, out_dir)
        return
    except FileExistsError:
        if not overwrite:
            raise ConversionError(f"{out_dir} appeared while converting (another conversion into the same folder, "
                                  "or a folder of yours); it is left as it is and this conversion is dropped") from None
    old = _unique_sibling(out_dir, "old")
    os.rename(out_dir, old)                                             # atomic: what moved is what is checked
    if not is_minilm_folder(old):
        _rename_no_replace(old, out_dir)                                # put it back untouched
        raise ConversionError(f"{out_dir} is not a minilm conversion (no {MARKER_FILE}); refusing to replace it: "
                              "choose another output folder or remove it yourself")
    try:
        _rename_no_replace(staging, out_dir)
    except FileExistsError:
        raise ConversionError(f"{out_dir} appeared while replacing it; it is left as it is") from None
    _remove(old)


def _rename_no_replace(source: str, target: str) -> None:
    """rename() that never replaces: FileExistsError if `target` exists (Linux renameat2 with
    RENAME_NOREPLACE, atomic; elsewhere a check just before the rename)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_cwd, no_replace = -100, 1
        if renameat2(at_cwd, os.fsencode(source), at_cwd, os.fsencode(target), no_replace) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), target)
        if code not in (errno.ENOSYS, errno.EINVAL):                    # EINVAL: the filesystem lacks the flag
            raise OSError(code, os.strerror(code), target)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    os.rename(source, target)


def _remove(path: str) -> None:
    """A folder we own, or a symlink to one (the link goes, its target stays)."""
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _unique_sibling(path: str, tag: str) -> str:
    """A hidden name next to `path`, e.g. `.smollm2.partial-1234-9f3a0c1e`."""
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_siblings(out_dir: str) -> list[str]:
    """Remove the staging (`.partial-`) and replaced (`.old-`) siblings of `out_dir` that a killed
    process left behind: minilm's marker is inside (the name alone proves nothing), its PID no longer
    runs here and nothing in it changed for STALE_AFTER_S
    (the second test keeps a live conversion in another PID namespace safe). Returns what went."""
    parent, name = os.path.split(out_dir)
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:partial|old)-(\d+)-[0-9a-f]{{8}}")
    try:
        entries = os.listdir(parent or ".")
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry)
        path = os.path.join(parent, entry)
        if match and _made_by_minilm(path) and not _process_alive(int(match[1])) and _quiet_for(path, STALE_AFTER_S):
            _remove(path)
            removed.append(path)
    return removed


def _made_by_minilm(path: str) -> bool:
    """A staging folder holds STAGING_MARKER from its creation, a finished or replaced one MARKER_FILE:
    a folder of the user's that merely has such a name holds neither and is never removed."""
    return os.path.isdir(path) and any(os.path.lexists(os.path.join(path, m)) for m in (STAGING_MARKER, MARKER_FILE))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # it exists but belongs to someone else
        return True
    return True


def _quiet_for(path: str, seconds: float) -> bool:
    """Nothing in `path` (one level deep: a conversion writes flat files) changed for `seconds`."""
    try:
        times = [os.lstat(path).st_mtime]
        if os.path.isdir(path) and not os.path.islink(path):
            times += [os.lstat(os.path.join(path, n)).st_mtime for n in os.listdir(path)]
    except OSError:
        return False
    return time.time() - max(times) > seconds
