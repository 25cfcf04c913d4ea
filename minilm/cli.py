"""The `minilm` command: generate, chat, convert, perplexity, bench, parity, masks.

Bad input prints one line `minilm: error: ...` and exits with status 2; no tracebacks.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from . import attention, bench, masks, parity, testing
from .resolve import resolve_model_dir

DEFAULT_BACKEND = "numba"


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit status 2."""


class _ClosedStream:
    """Stands in for a standard stream that was closed before minilm started (Python sets it to
    None): writing says so as an OSError, which main() reports; reading gives end of file."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text: str) -> int:
        raise OSError(f"standard {self.name} is closed")

    def flush(self) -> None:
        pass

    def readline(self, *args) -> str:
        return ""

    read = readline

    def isatty(self) -> bool:
        return False


def _replace_closed_streams() -> None:
    """`minilm chat <&-` reads end of file, `minilm generate ... >&-` reports a closed stdout,
    and with stderr closed errors are lost but the exit status stays."""
    if sys.stdin is None:
        sys.stdin = _ClosedStream("input")
    if _unwritable(sys.stdout):
        sys.stdout = _ClosedStream("output")
    if _unwritable(sys.stderr):
        sys.stderr = open(os.devnull, "w")


def _unwritable(stream) -> bool:
    """None (closed before Python started), or a descriptor the shell closed and the process then
    reused for a file opened read-only (writing to it fails with EBADF)."""
    if stream is None:
        return True
    try:
        import fcntl
        return fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    except (ImportError, OSError, ValueError, AttributeError):   # no fcntl, or not a real file (pytest)
        return False


_replace_closed_streams()   # at import, before a default argument (stream_reply's `out`) captures None


def load_tokenizer(args):
    from .tokenizer import Tokenizer
    args.model_dir = resolve_model_dir(args.model)
    return Tokenizer.from_pretrained(args.model_dir)


def load_model(args):
    import minilm
    return minilm.load(args.model_dir, backend=args.backend, weight_dtype=getattr(args, "weight_dtype", "float32"))


def check_prompt_fits(ids: np.ndarray, args) -> None:
    """Refuse a prompt that leaves no room before loading any weights."""
    from .config import load_config
    max_pos = load_config(args.model_dir).max_position_embeddings
    if ids.shape[1] >= max_pos:
        raise CLIError(f"the prompt has {ids.shape[1]} tokens; max_position_embeddings={max_pos} leaves no room")


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed)


def check_sampling_args(args) -> None:
    if args.max_new_tokens <= 0:
        raise CLIError(f"--max-new-tokens={args.max_new_tokens} must be a positive integer")
    if args.temperature < 0:
        raise CLIError(f"--temperature={args.temperature} must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        raise CLIError(f"--top-p={args.top_p} must be in (0, 1]")
    if args.top_k < 0:
        raise CLIError(f"--top-k={args.top_k} must be >= 0")


def prompt_ids(tokenizer, messages: list[dict]) -> np.ndarray:
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:  # a base model without a template: plain text continuation
        ids = tokenizer.encode("\n".join(m["content"] for m in messages))
    return np.asarray([ids], dtype=np.int64)


def stream_reply(model, tokenizer, ids: np.ndarray, args, out=sys.stdout) -> str:
    """Print the reply as it is generated; return its text. Speed goes to stderr.

    Tokens/s counts from the first piece on, so prefill (and Numba's one-time compilation
    on a first run) shows separately as the time to the first token.
    """
    from .generate import stream_text
    pieces, start, first = [], time.perf_counter(), None
    for piece in stream_text(model, tokenizer, ids, **sampling_kwargs(args)):
        first = first or time.perf_counter()
        pieces.append(piece)
        out.write(piece)
        out.flush()
    end = time.perf_counter()
    out.write("\n")
    text = "".join(pieces)
    n_tokens = len(tokenizer.encode(text, add_special_tokens=False)) if text else 0
    first = first or end
    rate = (n_tokens - 1) / (end - first) if n_tokens > 1 and end > first else float("nan")
    sys.stderr.write(f"[{n_tokens} tokens; first after {first - start:.2f} s, then {rate:.1f} tokens/s; "
                     f"backend {args.backend}]\n")
    return text


# --- subcommands -------------------------------------------------------------

def cmd_generate(args) -> int:
    check_sampling_args(args)
    if not args.prompt.strip():
        raise CLIError("the prompt is empty")
    tokenizer = load_tokenizer(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": args.prompt}]
    ids = prompt_ids(tokenizer, messages)
    check_prompt_fits(ids, args)
    stream_reply(load_model(args), tokenizer, ids, args)
    return 0


def cmd_chat(args) -> int:
    check_sampling_args(args)
    tokenizer = load_tokenizer(args)
    model = load_model(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    print("minilm chat: type a message; /reset clears the conversation; Ctrl-D exits.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() == "/reset":
            history = list(system)
            print("[conversation cleared]", file=sys.stderr)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            reply = stream_reply(model, tokenizer, prompt_ids(tokenizer, history), args)
        except ValueError as e:  # e.g. the conversation outgrew the context: say so, keep chatting
            history.pop()
            print(f"minilm: error: {e} (use /reset)", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": reply})


def cmd_convert(args) -> int:
    from .convert import convert_gguf
    check_input_file(args.gguf, "GGUF file")
    out = convert_gguf(args.gguf, args.out_dir, progress=True, overwrite=args.overwrite)
    print(f"converted {args.gguf} -> {out or args.out_dir}")
    return 0


def check_input_file(path: str, what: str) -> None:
    """An existing regular file (a FIFO would block, a folder cannot be read as text)."""
    if not os.path.exists(path):
        raise CLIError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise CLIError(f"{what} {path!r} is not a regular file")


def read_text_file(path: str) -> str:
    """The UTF-8 text of `path`, or a one-line error naming the file and the first bad byte."""
    check_input_file(path, "text file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def cmd_perplexity(args) -> int:
    if args.context < 2:
        raise CLIError(f"--context={args.context} must be at least 2 (each chunk predicts its tokens after the first)")
    text = read_text_file(args.file)
    tokenizer = load_tokenizer(args)
    model = load_model(args)
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise CLIError(f"{args.file} has fewer than 2 tokens")
    context = min(args.context, model.config.max_position_embeddings)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(ids) - 1, context):
        chunk = np.asarray([ids[start:start + context]], dtype=np.int64)
        if chunk.shape[1] < 2:
            break
        loss = model(chunk, labels=chunk).loss                 # mean over chunk_len - 1 predictions
        if not math.isfinite(loss):
            raise CLIError(f"the loss of the chunk at token {start} is {loss}: the model's logits are not finite")
        total_nll += loss * (chunk.shape[1] - 1)
        total_tokens += chunk.shape[1] - 1
        sys.stderr.write(f"\r{total_tokens}/{len(ids) - 1} tokens")
    sys.stderr.write("\n")
    print(f"perplexity {math.exp(total_nll / total_tokens):.4f} over {total_tokens} predicted tokens "
          f"(context {context}, non-overlapping chunks)")
    return 0


def _add_model_args(p, sampling: bool = True) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint folder, hub id or .gguf file (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=["numpy", "numba", "cuda", "cuda-emulated"])
    p.add_argument("--weight-dtype", default="float32", choices=["float32", "bfloat16"])
    if sampling:
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--top-k", type=int, default=50)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--system", default=None, help="system prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilm", description="A readable LLM inference engine.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="answer one prompt")
    p.add_argument("prompt")
    _add_model_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat")
    _add_model_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("convert", help="convert a Llama-architecture GGUF into a checkpoint folder")
    p.add_argument("gguf")
    p.add_argument("out_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in out_dir")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("perplexity", help="perplexity of a text file")
    p.add_argument("file")
    p.add_argument("--context", type=int, default=512)
    _add_model_args(p, sampling=False)
    p.set_defaults(func=cmd_perplexity)

    for name, module, help_text in [("bench", bench, "speed against transformers"),
                                    ("parity", parity, "layer-by-layer error against transformers"),
                                    ("masks", masks, "draw attention masks"),
                                    ("attention", attention, "draw the attention weights of a text, per head"),
                                    ("random-checkpoint", testing, "write a random-weight checkpoint of a real "
                                                                   "config, one tensor at a time")]:
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    return parser


def _user_error_types() -> tuple:
    """Exceptions that mean bad input or environment (exit 2), not a bug in minilm (exit 1)."""
    try:
        from .cuda.backend import NoGpuError          # --backend cuda on a machine without a GPU
    except ImportError:
        NoGpuError = CLIError
    return (CLIError, ValueError, ImportError, OSError, NoGpuError)


def main(argv=None) -> int:
    _replace_closed_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `minilm ... | head`: the reader left; stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, _user_error_types()):
            return _report(f"minilm: error: {_one_line(e)}", 2)
        if isinstance(e, MemoryError):
            return _report("minilm: error: out of memory", 2)
        # a bug in minilm: still one line, the traceback on request
        return _report(f"minilm: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for "
                       "the traceback)", 1)


def _report(line: str, status: int) -> int:
    """Print the error line to stderr if it can take it; the exit status says it either way."""
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass
    return status


def _one_line(error: BaseException) -> str:
    """The first line of the message (OSErrors name their file in it), or the type's name."""
    lines = str(error).splitlines()
    return lines[0] if lines and lines[0] else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
