"""Attention-mask pictures: which keys each layer's queries may look at.

    from minilm.masks import mask_pictures, render_text, save_png
    masks = mask_pictures("path/to/cohere2", length=8, attention_mask=[0, 0, 1, 1, 1, 1, 1, 1])
    print(render_text("path/to/cohere2", length=8, attention_mask=[0, 0, 1, 1, 1, 1, 1, 1]))

Row i is a query token, column j a key token; ■ = visible, ⬚ = masked. The
rule (docs/semantics.md sections 4.3, 6.1) is the one the model itself uses,
`minilm.ops.attention.attention_mask`:

    visible(i, j) = j <= i                      causal
                    and attention_mask[j]       the key is not padding
                    and j > i - W               sliding layers only: W keys, self included

Cohere2's global (full_attention) layers get the plain causal mask and no
positional encoding. A left-pad query row sees nothing (its output is never used).
"""
from __future__ import annotations

import os

import numpy as np

from .config import load_config
from .models import FAMILIES
from .ops.attention import attention_mask as visibility
from .resolve import resolve_model_dir

VISIBLE, MASKED = "■", "⬚"
# A picture is T x T cells per distinct layer rule; 1024 is already 2 MB of text and beyond reading.
MAX_LENGTH = 1024
GREEN, RESET = "\033[92m", "\033[0m"


def _config(config_or_model):
    """A ModelConfig from a ModelConfig, a loaded model, or a checkpoint folder / config.json path."""
    if isinstance(config_or_model, (str, os.PathLike)):
        return load_config(str(config_or_model))
    return getattr(config_or_model, "config", config_or_model)


def _padding(length: int | None, attention_mask) -> tuple[np.ndarray, bool]:
    """-> key_valid [B, T] bool, and whether the caller gave a batch (2-D mask)."""
    if attention_mask is None:
        check_length(length)
        return np.ones((1, length), dtype=bool), False
    mask = np.asarray(attention_mask).astype(bool)
    batched = mask.ndim == 2
    mask = np.atleast_2d(mask)
    if mask.ndim != 2 or (length is not None and mask.shape[1] != length):
        raise ValueError(f"attention_mask has shape {np.shape(attention_mask)}; expected [{length}] or [B, {length}]")
    check_length(mask.shape[1])
    return mask, batched


def check_length(length, name: str = "length") -> int:
    """A picture size: a positive integer up to MAX_LENGTH (checked before anything is allocated)."""
    if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or not 0 < length <= MAX_LENGTH:
        raise ValueError(f"{name}={length!r} must be an integer from 1 to {MAX_LENGTH}")
    return int(length)


def layer_description(config, i: int) -> str:
    """A short label: attention kind, window, and whether RoPE is applied."""
    family = FAMILIES[config.model_type]
    window = family.layer_window(config, i)
    kind = f"sliding window W={window}" if window else "causal (full attention)"
    return f"{kind}, {'RoPE' if family.layer_uses_rope(config, i) else 'no positional encoding (NoPE)'}"


def mask_pictures(config_or_model, length: int | None = None, attention_mask=None) -> list[np.ndarray]:
    """One bool matrix per layer: True where query i (row) may attend to key j (column).

    attention_mask: None (no padding), [T] (one sequence) or [B, T] (a batch), 1 = real token.
    Each matrix is [T, T], or [B, T, T] when attention_mask is 2-D. Layers with the same
    window share one read-only array, so memory grows with the distinct rules, not the layers.
    """
    config = _config(config_or_model)
    key_valid, batched = _padding(length, attention_mask)
    T = key_valid.shape[1]
    index = np.arange(T)
    by_window = {}
    family = FAMILIES[config.model_type]
    for i in range(config.num_hidden_layers):
        window = family.layer_window(config, i)
        if window not in by_window:
            mask = visibility(index, index, key_valid, window)                       # [B, T, T]
            mask = mask if batched else mask[0]
            mask.flags.writeable = False
            by_window[window] = mask
    return [by_window[family.layer_window(config, i)] for i in range(config.num_hidden_layers)]


def layer_groups(config) -> list[tuple[list[int], str]]:
    """Layers with the same mask rule, grouped: [([0, 1, 2], 'sliding ...'), ([3], 'causal ...')]."""
    groups: dict[str, list[int]] = {}
    for i in range(config.num_hidden_layers):
        groups.setdefault(layer_description(config, i), []).append(i)
    return [(layers, text) for text, layers in groups.items()]


def _layer_list(layers: list[int]) -> str:
    if len(layers) > 6:
        return f"{len(layers)} layers ({', '.join(map(str, layers[:4]))}, ..., {layers[-1]})"
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))


def render_matrix(mask: np.ndarray, labels: list[str] | None = None, color: bool = False) -> str:
    """One [T, T] bool matrix as text: column indices on top, `label: row` on the left."""
    mask = np.asarray(mask, dtype=bool)
    T = mask.shape[0]
    if labels is None:
        shown, prefix = [""] * T, 0
    else:
        # Tokens are shown as repr (like transformers' visualizer), so spaces stay visible.
        shown = [x if x in ("", "<pad>") or x.isdigit() else repr(x) for x in map(str, labels)]
        prefix = max(len(x) for x in shown) + 2
    digits = len(str(T - 1))
    pad = " " * (prefix + digits + 1)
    lines = [pad + " ".join(str(j).rjust(digits)[d] for j in range(T)) for d in range(digits)]
    for i in range(T):
        cells = []
        for j in range(T):
            cell = VISIBLE if mask[i, j] else MASKED
            cells.append(f"{GREEN}{cell}{RESET}" if color and i == j and mask[i, j] else cell)
        label = shown[i].ljust(prefix - 2) + (": " if shown[i] else "  ") if prefix else ""
        lines.append(f"{label}{str(i).rjust(digits)} " + " ".join(cells))
    return "\n".join(lines)


def render_text(config_or_model, length: int | None = None, attention_mask=None, labels=None,
                row: int = 0, color: bool = False) -> str:
    """Terminal pictures, one per distinct layer rule (like transformers' AttentionMaskVisualizer).

    labels: a name per position (tokens), default the position index; row: which batch row to draw.
    """
    config = _config(config_or_model)
    pictures = mask_pictures(config, length, attention_mask)
    key_valid, _ = _padding(length, attention_mask)
    if labels is None and not key_valid[row].all():
        labels = ["" if key_valid[row, j] else "<pad>" for j in range(key_valid.shape[1])]
    out = [f"{config.model_type}: {config.num_hidden_layers} layers, {key_valid.shape[1]} tokens"
           f"{f', {int((~key_valid[row]).sum())} padding' if not key_valid[row].all() else ''}"
           f"   ({VISIBLE} = query row may attend to key column, {MASKED} = masked)"]
    for layers, text in layer_groups(config):
        picture = pictures[layers[0]]
        picture = picture[row] if picture.ndim == 3 else picture
        out += ["", f"{_layer_list(layers)}: {text}", render_matrix(picture, labels, color)]
    return "\n".join(out)


def save_png(config_or_model, path: str, length: int | None = None, attention_mask=None, labels=None,
             row: int = 0) -> str:
    """The same pictures as render_text, one panel per distinct layer rule, written to `path` (PNG)."""
    from matplotlib.figure import Figure   # no pyplot: no GUI backend, no global state

    config = _config(config_or_model)
    pictures = mask_pictures(config, length, attention_mask)
    key_valid, _ = _padding(length, attention_mask)
    T = key_valid.shape[1]
    if labels is None:
        labels = [str(j) if key_valid[row, j] else "pad" for j in range(T)]
    groups = layer_groups(config)
    size = max(3.0, 0.3 * T + 1.5)
    fig = Figure(figsize=(size * len(groups), size + 0.6))
    axes = fig.subplots(1, len(groups), squeeze=False)
    for ax, (layers, text) in zip(axes[0], groups):
        picture = pictures[layers[0]]
        picture = picture[row] if picture.ndim == 3 else picture
        ax.imshow(picture, cmap="Blues", vmin=0, vmax=1.25, interpolation="nearest")
        ax.set_xticks(range(T), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(T), labels, fontsize=8)
        ax.set_xticks(np.arange(T + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(T + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="#c8c8c8", lw=0.6)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"{_layer_list(layers)}\n{text}", fontsize=9)
    fig.suptitle(f"{config.model_type} attention masks", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# --- CLI ---------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint folder, hub id or .gguf, or a config name of `minilm random-checkpoint` "
                             "(command-r7b, cohere2, ...) (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--length", type=int, default=None,
                        help="sequence length to draw, padding included (default 8, or the prompt's length)")
    parser.add_argument("--pad", type=int, default=0, help="left padding: the first N positions are padding")
    parser.add_argument("--prompt", default=None, help="label rows and columns with the tokens of this text")
    parser.add_argument("--png", default=None, metavar="PATH", help="also write the pictures to a PNG file")
    parser.add_argument("--color", action="store_true", help="highlight the diagonal in green (ANSI)")


def model_or_named_config(model: str | None):
    """A checkpoint folder, or the ModelConfig of a config name `minilm random-checkpoint` knows."""
    from .config import parse_config
    from .testing import named_config
    config = named_config(model)
    return parse_config(config, source=f"config {model!r}") if config else resolve_model_dir(model)


def main(args) -> int:
    labels, length = None, args.length
    if length is not None:
        check_length(length, "--length")                 # before any model is converted or read
    if not 0 <= args.pad < MAX_LENGTH:
        raise ValueError(f"--pad={args.pad} must be from 0 to {MAX_LENGTH - 1}")
    model_dir = model_or_named_config(args.model)
    if args.prompt is not None:
        from .tokenizer import Tokenizer
        if not isinstance(model_dir, str):
            raise ValueError(f"--model {args.model} is a config name, without a tokenizer for --prompt: use "
                             "--length, or a checkpoint folder")
        tokenizer = Tokenizer.from_pretrained(model_dir)
        ids = tokenizer.encode(args.prompt)
        labels = ["<pad>"] * args.pad + [tokenizer.decode([t]) for t in ids]
        if length is not None and length != len(labels):
            raise ValueError(f"--length={length} does not match the prompt's {len(ids)} tokens + {args.pad} padding")
        length = len(labels)
    length = check_length(8 if length is None else length, "--length")
    if args.pad >= length:
        raise ValueError(f"--pad={args.pad} must be smaller than --length={length}")
    attention_mask = np.arange(length) >= args.pad
    print(render_text(model_dir, length, attention_mask, labels=labels, color=args.color))
    if args.png:
        save_png(model_dir, args.png, length, attention_mask, labels=labels)
        print(f"\nwrote {args.png}")
    return 0
