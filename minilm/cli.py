"""The `minilm` command: generate, chat, convert, perplexity, bench, parity, masks, gpu-check.

Bad input prints one line `minilm: error: ...` and exits with status 2; no tracebacks.
A command whose optional dependencies are missing names the pip extra to install.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np

from . import __version__, attention, bench, gpu_check, masks, parity, testing
from .chat import (ChatSession, check_settings, effective_settings, format_settings, prompt_ids, run_chat,
                   stream_reply)
from .extras import require_extra
from .gguf_file import gguf_architectures
from .resolve import resolve_model_dir

DEFAULT_BACKEND = "numba"
QUANTIZED_FORMATS = ["q8_0", "q4_0", "q4_1", "int8", "int4", "fp4", "nf4"]   # minilm.formats, by library
SETTING_OPTIONS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "seed")


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


def require_backend_extra(args) -> None:
    """Refuse a CUDA backend without CuPy before any model is resolved or converted."""
    if getattr(args, "backend", None) in ("cuda", "cuda-emulated"):
        require_extra("cupy", "cuda", f"minilm {args.command} --backend {args.backend}")


def load_tokenizer(args):
    from .tokenizer import Tokenizer
    require_backend_extra(args)          # the first step of every model command: fail before converting anything
    args.gguf = gguf_to_run(args)
    # tokenizer, config.json, generation_config.json (for a .gguf run as stored, without a float32 copy)
    # (the default model included: run as stored, it needs no float32 copy of its weights)
    args.model_dir = resolve_model_dir(args.gguf, weights=False) if args.gguf else resolve_model_dir(args.model)
    if args.gguf and not os.path.exists(os.path.join(args.model_dir, "tokenizer.json")):
        raise CLIError(gguf_without_tokenizer(args.model_dir, args.gguf))
    return Tokenizer.from_pretrained(args.model_dir)


def gguf_without_tokenizer(side_folder: str, gguf: str) -> str:
    """Why a GGUF's side folder has no tokenizer (recorded by convert_gguf), as one line."""
    from .convert import MARKER_FILE
    try:
        with open(os.path.join(side_folder, MARKER_FILE), encoding="utf-8") as f:
            reason = json.load(f).get("no_tokenizer")
    except (OSError, ValueError):
        reason = None
    reason = (reason or "none in the file").removeprefix(f"{gguf}: ")
    return f"{gguf}: no tokenizer minilm can use ({reason}); minilm.load() still runs its blocks"


def gguf_to_run(args) -> str | None:
    """The .gguf whose blocks the model runs as stored (the default model's too), or None: a folder,
    or --weight-dtype asking for the float copy converted from the GGUF."""
    if args.weight_dtype is not None:
        return None
    if args.model is None:
        from .default_model import default_gguf
        return default_gguf()
    path = os.path.expanduser(str(args.model))
    return path if path.endswith(".gguf") else None


def load_model(args):
    import minilm
    options = {"num_threads": args.threads} if getattr(args, "threads", None) else {}
    model = minilm.load(args.gguf or args.model_dir, backend=args.backend, weight_dtype=args.weight_dtype or "float32",
                        quantize=args.quantize, mode=arithmetic_mode(args), cache_dtype=args.cache_dtype, **options)
    if getattr(args, "verbose", False):
        print(f"[loaded: {weight_summary(model)}]", file=sys.stderr)
        print(f"[cpu: {cpu_summary(args.backend)}]", file=sys.stderr)
    return model


def cpu_summary(backend: str) -> str:
    """'AMD EPYC (avx2 fma f16c), fast kernels: avx2, 2 threads': the CPU and the code it runs."""
    from .bench import machine
    m = machine()
    isa = " ".join(m["isa"]) or "no flags read"
    kernels = f"fast kernels: {m['kernel_path']}" if backend == "numba" else f"backend {backend}"
    return f"{m['cpu']} ({isa}), {kernels}, {m['numba_threads']} threads"


def weight_summary(model) -> str:
    """'210 q4_1 fast, 1 q8_0 fast, 61 float32 arrays': the formats the loaded model really holds."""
    counts = {}
    for value in {id(v): v for v in model.weights.values()}.values():          # a tied head counts once
        if not hasattr(value, "format"):
            kind = f"{value.dtype} arrays"                                          # norms, biases
        else:
            kind = f"{value.format} {value.mode}" if value.format in QUANTIZED_FORMATS else f"{value.format} matrix"
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda item: -item[1]))


def arithmetic_mode(args) -> str:
    """--mode, else exact for the default model (see --mode's help) and auto for any other."""
    return args.mode or ("exact" if args.model is None else "auto")


def describe_weights(args) -> str:
    """What the weights are, for --verbose: 'q4_1 blocks of x.gguf, fast mode', 'float32', ..."""
    stored = f"{os.path.basename(args.gguf)} as stored" if args.gguf else (args.weight_dtype or "float32")
    quantized = f", linear layers quantized to {args.quantize}" if args.quantize else ""
    return f"{stored}{quantized}, mode {arithmetic_mode(args)}, cache {args.cache_dtype}"


def check_prompt_fits(ids: np.ndarray, args) -> None:
    """Refuse a prompt that leaves no room before loading any weights."""
    from .config import load_config
    max_pos = load_config(args.model_dir).max_position_embeddings
    if ids.shape[1] >= max_pos:
        raise CLIError(f"the prompt has {ids.shape[1]} tokens; max_position_embeddings={max_pos} leaves no room")


def option_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_sampling_args(args) -> None:
    """The options given on the command line, before anything is loaded."""
    check_settings({key: getattr(args, key) for key in SETTING_OPTIONS}, spell=option_name)
    threads = getattr(args, "threads", None)
    if threads is not None and threads <= 0:
        raise CLIError(f"--threads={threads} must be a positive integer")
    if threads is not None and args.backend != "numba":
        raise CLIError(f"--threads applies to the numba backend, not --backend {args.backend}")


def sampling_settings(args) -> dict:
    """The command line > the checkpoint's generation_config.json > minilm's defaults; shown on --verbose."""
    from .loading import load_generation_config
    settings, sources = effective_settings({key: getattr(args, key) for key in SETTING_OPTIONS},
                                           load_generation_config(args.model_dir))
    # A bad value can only come from generation_config.json here: name it as the file does.
    check_settings(settings, spell=lambda key: option_name(key) if sources[key] == "command line" else key)
    if args.verbose:
        print(f"[model {args.model_dir}; backend {args.backend}, weights {describe_weights(args)}"
              f"{f', {args.threads} threads' if args.threads else ''}]", file=sys.stderr)
        print(f"[settings: {format_settings(settings, sources)}]", file=sys.stderr)
    return settings


def system_messages(args) -> list[dict]:
    return [{"role": "system", "content": args.system}] if args.system else []


# --- subcommands -------------------------------------------------------------

def cmd_generate(args) -> int:
    check_sampling_args(args)
    if not args.prompt.strip():
        raise CLIError("the prompt is empty")
    tokenizer = load_tokenizer(args)
    settings = sampling_settings(args)
    ids = prompt_ids(tokenizer, system_messages(args) + [{"role": "user", "content": args.prompt}])
    check_prompt_fits(ids, args)
    stream_reply(load_model(args), tokenizer, ids, settings, args.backend, threads=args.threads)
    return 0


def cmd_chat(args) -> int:
    check_sampling_args(args)
    tokenizer = load_tokenizer(args)
    settings = sampling_settings(args)
    session = ChatSession(load_model(args), tokenizer, settings, args.backend, system=args.system,
                          threads=args.threads)
    return run_chat(session)


def cmd_parity(args) -> int:
    require_extra(("torch", "transformers"), "parity", "minilm parity")
    if args.backend in ("cuda", "cuda-emulated"):
        require_extra("cupy", "cuda", f"minilm parity --backend {args.backend}")
    return parity.main(args)


def cmd_masks(args) -> int:
    if args.png:
        require_extra("matplotlib", "notebooks", "minilm masks --png")
    return masks.main(args)


def cmd_attention(args) -> int:
    if args.png:
        require_extra("matplotlib", "notebooks", "minilm attention --png")
    require_backend_extra(args)
    return attention.main(args)


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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help text already says it (or it is an on/off flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or isinstance(action.default, bool) or action.default in (None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter,
                          allow_abbrev=False)


def _add_model_args(p, sampling: bool = True) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint folder, hub id or .gguf file; a bitsandbytes 4-bit or torchao int4/int8 "
                        "checkpoint runs its codes as stored (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=["numpy", "numba", "cuda", "cuda-emulated"],
                   help="numba (fast CPU), numpy (the reference to step through), cuda (a GPU) or cuda-emulated "
                        "(the CUDA kernels run on the CPU); the cuda ones need the [cuda] extra")
    # float16 is left out: only the CUDA backends run it (minilm.load(..., weight_dtype="float16") there)
    p.add_argument("--weight-dtype", default=None, choices=["float32", "bfloat16"],
                   help="how weight matrices are stored; arithmetic is float32 either way (default: a .gguf's "
                        "blocks as stored, the default model's too; float32 for a folder)")
    p.add_argument("--quantize", default=None, choices=QUANTIZED_FORMATS,
                   help="quantize the decoder's linear layers on load: GGUF q8_0/q4_0/q4_1, torchao int8/int4, "
                        "bitsandbytes fp4/nf4 (docs/quantization.md; default: none)")
    p.add_argument("--mode", default=None, choices=["auto", "exact", "fast"],
                   help="quantized arithmetic: exact (decoded weights, float32 products: transformers' answers), "
                        "fast (activations in 8 bits, integer dot products: llama.cpp's answers) or auto (fast "
                        "where the backend has it). Default: auto, but exact for the default model, whose 135M "
                        "weights answer visibly worse with 8-bit activations (llama.cpp's answers are as bad)")
    p.add_argument("--cache-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="KV cache storage; bfloat16 halves its memory (numpy and numba backends)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the numba backend (default: all cores, or 1 on a decode step where "
                        "that is faster because another process holds a core)")
    if sampling:
        p.add_argument("--verbose", action="store_true",
                       help="show the model folder and the effective settings, and where each comes from")
        from_file = "from the model's generation_config.json, else"
        p.add_argument("--max-new-tokens", type=int, default=None,
                       help=f"longest reply in tokens (default: {from_file} 256)")
        p.add_argument("--temperature", type=float, default=None,
                       help=f"sampling temperature; 0 = greedy (default: {from_file} 0 = greedy)")
        p.add_argument("--top-p", type=float, default=None,
                       help=f"sample from the smallest set of tokens whose probability reaches P (default: "
                            f"{from_file} 1.0 = off)")
        p.add_argument("--top-k", type=int, default=None,
                       help=f"sample from the K most likely tokens; 0 = off (default: {from_file} 50)")
        p.add_argument("--min-p", type=float, default=None,
                       help=f"drop tokens less likely than P x the most likely one (default: {from_file} off)")
        p.add_argument("--repetition-penalty", type=float, default=None,
                       help=f"divide the scores of tokens already in the text by this; 1 = off (default: "
                            f"{from_file} 1.0)")
        p.add_argument("--seed", type=int, default=None,
                       help="random seed for sampling, for repeatable replies (default: a fresh seed each run)")
        p.add_argument("--system", default=None, help="system prompt (default: none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilm", description="A readable LLM inference engine.",
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"minilm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = add_command(sub, "generate", "answer one prompt, streaming the reply")
    p.add_argument("prompt", help="the user message (sent through the model's chat template)")
    _add_model_args(p)
    p.set_defaults(func=cmd_generate)

    p = add_command(sub, "chat", "interactive multi-turn chat (/help inside for its commands)")
    _add_model_args(p)
    p.set_defaults(func=cmd_chat)

    archs = gguf_architectures()
    p = add_command(sub, "convert", f"convert a GGUF of architecture {', '.join(archs[:-1])} or {archs[-1]} "
                                    "into a checkpoint folder (float32 safetensors, config, tokenizer)")
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("out_dir", help="the checkpoint folder to write (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in out_dir")
    p.set_defaults(func=cmd_convert)

    p = add_command(sub, "perplexity", "perplexity of a text file")
    p.add_argument("file", help="a UTF-8 text file")
    p.add_argument("--context", type=int, default=512, help="tokens per chunk (non-overlapping chunks)")
    _add_model_args(p, sampling=False)
    p.set_defaults(func=cmd_perplexity)

    for name, module, func, help_text in [
            ("bench", bench, bench.main, "speed of every backend side by side"),
            ("parity", parity, cmd_parity, "layer-by-layer error against transformers (the [parity] extra)"),
            ("masks", masks, cmd_masks, "draw attention masks (--png: the [notebooks] extra)"),
            ("attention", attention, cmd_attention, "draw the attention weights of a text, per head "
                                                    "(--png: the [notebooks] extra)"),
            ("random-checkpoint", testing, testing.main, "write a random-weight checkpoint of a real config, "
                                                         "one tensor at a time"),
            ("gpu-check", gpu_check, gpu_check.main, "check the whole CUDA path on a GPU: versions, cuda vs numpy on "
                                                     "every format, the CUDA tests, 7B speed (--dry-run: no GPU)")]:
        p = add_command(sub, name, help_text)
        module.add_arguments(p)
        p.set_defaults(func=func)
    return parser


def _user_error_types() -> tuple:
    """Exceptions that mean bad input or environment (exit 2), not a bug in minilm (exit 1)."""
    try:
        from .cuda.backend import NoGpuError          # --backend cuda on a machine without a GPU
    except ImportError:
        NoGpuError = CLIError
    return (CLIError, ValueError, ImportError, OSError, NoGpuError, parity.ReferenceUnavailableError)


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI's users read it: `minilm: warning: ...`, one line, no Python source under it."""
    text = " ".join(str(message).split())
    try:
        print(f"minilm: warning: {text}", file=file or sys.stderr, flush=True)
    except OSError:
        pass


def main(argv=None) -> int:
    _replace_closed_streams()
    with warnings.catch_warnings():              # restores Python's own formatter for an in-process caller
        warnings.showwarning = one_line_warning
        return run(argv)


def run(argv=None) -> int:
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
