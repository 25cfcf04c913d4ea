"""Attention pictures from real text: where each token looks (`minilm attention`).

    minilm attention --model M "The quick brown fox" --layer 3             # top keys per query, every head
    minilm attention --model M "The quick brown fox" --layer 3 --head 2 --png fox.png
    minilm attention --model random-cohere2/ --ids 5,9,13,17,21,25 --layer 0     # no tokenizer needed

    from minilm.attention import attention_weights, figure
    weights, tokens = attention_weights(model, tokenizer, "The quick brown fox", layer=3)   # [H, T, T]
    figure(weights, tokens, layer=3).savefig("fox.png")

The weights are the model's own (`model(ids, output_attentions=True)`, the
`attention_probs` op): row i is a query token, column j a key token, each row
sums to 1 over the keys its mask lets it see (`minilm masks` draws the masks).
The text is encoded as is, without a chat template. matplotlib is needed only
for pictures.
"""
from __future__ import annotations

import numpy as np

from .resolve import resolve_model_dir


MAX_TOKENS = 512     # [H, T, T] weights per layer: 512 tokens and 32 heads are 32 MiB; a picture stays readable


def attention_weights(model, tokenizer, text: str, layer: int, max_tokens: int = MAX_TOKENS
                      ) -> tuple[np.ndarray, list[str]]:
    """One layer's weights for `text`: ([H, T, T] float32, the T tokens as strings)."""
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text encodes to no tokens")
    return ids_attention_weights(model, ids, layer, max_tokens), [tokenizer.decode([t]) for t in ids]


def ids_attention_weights(model, ids: list[int], layer: int, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """One layer's weights for token ids: [H, T, T] float32. T is at most max_tokens and never more
    than the model's max_position_embeddings; only the asked layer's weights are kept (each layer's
    are computed in turn and dropped)."""
    layers = model.config.num_hidden_layers
    if not 0 <= layer < layers:
        raise ValueError(f"--layer={layer} must be in 0..{layers - 1} (the model has {layers} layers)")
    limit = min(max_tokens, model.config.max_position_embeddings)
    if len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens; minilm attention shows at most {limit} (the weights "
                         "grow with the square of the length): shorten the text")
    kept = {}

    def keep(name, value):
        if name == f"layers.{layer}.attn.probs":
            kept["probs"] = np.array(model.backend.to_numpy(value), dtype=np.float32)
    model(np.asarray([ids], dtype=np.int64), on_record=keep, logits_to_keep=1)
    return kept["probs"][0]


def parse_ids(text: str, vocab_size: int) -> list[int]:
    """'5,9,13' or '5 9 13' -> [5, 9, 13], each a token id of the model's vocabulary."""
    items = text.replace(",", " ").split()
    if not items or not all(item.isdigit() for item in items):
        raise ValueError(f"--ids={text!r} must be token ids separated by commas, e.g. --ids 5,9,13")
    ids = [int(item) for item in items]
    if max(ids) >= vocab_size:
        raise ValueError(f"--ids: token id {max(ids)} is not below the model's vocab_size {vocab_size}")
    return ids


def _check_head(weights: np.ndarray, head: int | None) -> list[int]:
    heads = weights.shape[0]
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"--head={head} must be in 0..{heads - 1} (the layer has {heads} heads)")
    return list(range(heads)) if head is None else [head]


def render_text(weights: np.ndarray, tokens: list[str], layer: int, head: int | None = None, top: int = 3) -> str:
    """The `top` keys each query attends to most, per head: `  4 ' fox' -> 'The' 0.61, ' brown' 0.22`."""
    shown = [repr(t) for t in tokens]                # repr keeps spaces and newlines visible
    width = max(len(s) for s in shown)
    lines = []
    for h in _check_head(weights, head):
        lines.append(f"layer {layer}, head {h}: top {top} keys per query (weight)")
        for i, row in enumerate(weights[h]):                                 # row [T] over keys
            best = np.argsort(-row, kind="stable")[:top]
            keys = ", ".join(f"{shown[j]} {row[j]:.2f}" for j in best if row[j] > 0)
            lines.append(f"{i:>4} {shown[i].ljust(width)} -> {keys}")
        lines.append("")
    return "\n".join(lines).rstrip()


def matplotlib_figure_class():
    """matplotlib's Figure (no pyplot: no GUI backend, no global state), or a one-line error."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("attention pictures need matplotlib: pip install matplotlib") from None
    return Figure


def figure(weights: np.ndarray, tokens: list[str], layer: int, head: int | None = None):
    """A matplotlib Figure: one head, or a grid of every head, tokens on both axes."""
    Figure = matplotlib_figure_class()
    heads = _check_head(weights, head)
    cols = int(np.ceil(np.sqrt(len(heads))))
    rows = -(-len(heads) // cols)
    T = len(tokens)
    size = max(3.0, 0.28 * T + 1.5)
    fig = Figure(figsize=(size * cols, size * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, h in zip(axes, heads):
        ax.imshow(weights[h], cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(range(T), [repr(t) for t in tokens], rotation=90, fontsize=7)
        ax.set_yticks(range(T), [repr(t) for t in tokens], fontsize=7)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"head {h}", fontsize=9)
    for ax in axes[len(heads):]:
        ax.set_visible(False)
    fig.suptitle(f"layer {layer} attention weights (row = query, column = key)", fontsize=10)
    fig.tight_layout()
    return fig


# --- CLI ---------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="?", default=None,
                        help="the text whose attention to show (encoded as is, no chat template)")
    parser.add_argument("--ids", default=None,
                        help="token ids instead of a text, e.g. 5,9,13 (for a checkpoint without a tokenizer, "
                             "such as one of `minilm random-checkpoint`)")
    parser.add_argument("--model", default=None,
                        help="checkpoint folder, hub id or .gguf (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--layer", type=int, required=True, help="layer index, from 0")
    parser.add_argument("--head", type=int, default=None, help="one head (default: every head)")
    parser.add_argument("--top", type=int, default=3, help="keys listed per query in the text output")
    parser.add_argument("--png", default=None, metavar="PATH", help="also draw the weights into a PNG file")
    parser.add_argument("--backend", default="numba", choices=["numpy", "numba", "cuda", "cuda-emulated"],
                        help="minilm backend (the cuda ones need the [cuda] extra)")


def main(args) -> int:
    import minilm
    from .tokenizer import Tokenizer
    if args.png:
        matplotlib_figure_class()                  # refuse now, not after the model ran
    if args.top < 1:
        raise ValueError(f"--top={args.top} must be >= 1")
    if (args.text is None) == (args.ids is None):
        raise ValueError("give either a text or --ids, not both" if args.text is not None
                         else "give a text to encode, or --ids with token ids")
    model_dir = resolve_model_dir(args.model)
    model = minilm.load(model_dir, backend=args.backend, progress=False)
    if args.ids is not None:
        ids = parse_ids(args.ids, model.config.vocab_size)
        weights, tokens = ids_attention_weights(model, ids, args.layer), [str(i) for i in ids]
    else:
        weights, tokens = attention_weights(model, Tokenizer.from_pretrained(model_dir), args.text, args.layer)
    print(render_text(weights, tokens, args.layer, args.head, args.top))
    if args.png:
        figure(weights, tokens, args.layer, args.head).savefig(args.png, dpi=100)
        print(f"\nwrote {args.png}")
    return 0
