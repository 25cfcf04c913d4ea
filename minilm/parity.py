"""Layer-by-layer parity against transformers: where, and by how much, minilm differs.

    from minilm.parity import parity_report
    report = parity_report("path/to/checkpoint", decode_steps=3)
    print(report)                       # text tables, one per stage
    report.first_jump                   # first intermediate whose error passes the threshold
    report.first_divergence             # first greedy token that differs, with the top-2 logit gap

Both engines run the same checkpoint in float32 on the same prompt: a prefill
then `decode_steps` cached single-token steps. transformers uses eager
attention; its intermediates are captured with forward hooks on its modules
(input_layernorm, q/k/v_proj, o_proj, mlp, each decoder layer, final norm) and
with a wrapper around its `apply_rotary_pos_emb`, then named like minilm's tape
(docs/tape.md). Both sides are fed transformers' greedy token at every step, so
one early flip does not make every later comparison meaningless.

Errors of an intermediate `a` (minilm) against `b` (transformers):
    max_abs = max |a - b|
    max_rel = max |a - b| / max |b|     (relative to the tensor's scale, so
                                         large hidden states do not hide small bugs)

torch and transformers are imported only when a report is made: `import
minilm.parity` stays cheap for the CLI.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .resolve import resolve_model_dir

DEFAULT_PROMPT = "The capital of France is"
# Sub-steps shown as matrix columns, in execution order (others stay in `comparisons`).
TABLE_COLUMNS = ("attn_norm", "attn.q", "attn.k", "attn.v", "attn.q_norm", "attn.k_norm", "attn.q_rope",
                 "attn.k_rope", "attn.context", "attn.out", "mlp_norm", "mlp.out", "out")
# Names compared in the report: every float intermediate both sides record (masks are
# checked by tests/test_masks.py, attention weights by tests/test_output_attentions.py: their
# key axis differs once a sliding cache is involved, and attn.context carries their errors).
SKIPPED = ("attn.mask", "attn.probs")


@dataclass
class Comparison:
    """One intermediate at one stage: minilm vs transformers."""
    stage: str                 # "prefill", "decode 1", ...
    name: str                  # tape name, e.g. "layers.3.attn.q_rope"
    shape: tuple
    max_abs: float
    max_rel: float

    def error(self, metric: str) -> float:
        return self.max_abs if metric == "abs" else self.max_rel


@dataclass
class TokenCheck:
    """The greedy next token of both engines after one stage."""
    stage: str
    reference_token: int       # transformers' argmax (fed to both engines)
    minilm_token: int
    reference_gap: float       # transformers' top-1 minus top-2 logit
    minilm_gap: float          # minilm's logit of its own choice minus its logit of the reference token
    logits_max_abs: float

    @property
    def agrees(self) -> bool:
        return self.reference_token == self.minilm_token


@dataclass
class ParityReport:
    model_dir: str
    family: str
    backend: str
    threshold: float
    metric: str                # "rel" or "abs": which error the threshold applies to
    prompt_ids: list
    comparisons: list = field(default_factory=list)
    tokens: list = field(default_factory=list)

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(c.stage for c in self.comparisons))

    @property
    def first_jump(self) -> Comparison | None:
        """The first intermediate, in execution order, whose error passes the threshold."""
        return next((c for c in self.comparisons if c.error(self.metric) > self.threshold), None)

    @property
    def first_divergence(self) -> TokenCheck | None:
        return next((t for t in self.tokens if not t.agrees), None)

    @property
    def ok(self) -> bool:
        return self.first_jump is None and self.first_divergence is None

    def errors(self, stage: str = "prefill", metric: str | None = None) -> dict[str, float]:
        """{tape name: error} for one stage, in execution order."""
        metric = metric or self.metric
        return {c.name: c.error(metric) for c in self.comparisons if c.stage == stage}

    def divergence_verdict(self) -> str | None:
        """A near tie (harmless) if no intermediate passed the threshold before the flip."""
        tok = self.first_divergence
        if tok is None:
            return None
        stages = self.stages
        upto = stages[:stages.index(tok.stage) + 1] if tok.stage in stages else stages
        jumped = any(c.error(self.metric) > self.threshold for c in self.comparisons if c.stage in upto)
        if jumped:
            return "a real difference: intermediates passed the threshold before this token"
        return "a near tie: every intermediate stayed within the threshold, only the order of two close logits flipped"

    # --- text ------------------------------------------------------------------
    def format(self, stages: list[str] | None = None) -> str:
        lines = [f"minilm parity: {self.model_dir}",
                 f"family={self.family} backend={self.backend} threshold={self.threshold:g} on max_{self.metric} "
                 f"prompt={len(self.prompt_ids)} tokens, {len(self.stages) - 1} cached decode steps (greedy)",
                 "max_abs = max|minilm - transformers|, max_rel = max_abs / max|transformers|", ""]
        jump = self.first_jump
        if jump is None:
            lines.append(f"first jump: none, every intermediate is within {self.threshold:g} (max_{self.metric})")
        else:
            lines.append(f"first jump: {jump.stage} {jump.name}  max_abs={jump.max_abs:.3g} "
                         f"max_rel={jump.max_rel:.3g} > {self.threshold:g}")
        tok = self.first_divergence
        agree = sum(t.agrees for t in self.tokens)
        if tok is None:
            lines.append(f"greedy tokens: all {len(self.tokens)} agree ({[t.reference_token for t in self.tokens]})")
        else:
            lines.append(f"greedy tokens: {agree}/{len(self.tokens)} agree; first difference after {tok.stage}: "
                         f"transformers {tok.reference_token}, minilm {tok.minilm_token}")
            lines.append(f"  top-2 logit gap: transformers {tok.reference_gap:.3g}, minilm {tok.minilm_gap:.3g}; "
                         f"logits max_abs {tok.logits_max_abs:.3g}")
            lines.append(f"  verdict: {self.divergence_verdict()}")
        for stage in stages or self.stages:
            lines.append("")
            lines.extend(self._stage_table(stage))
        return "\n".join(lines)

    __str__ = format

    def _stage_table(self, stage: str) -> list[str]:
        rows = [c for c in self.comparisons if c.stage == stage]
        by_name = {c.name: c for c in rows}
        layers = sorted({int(c.name.split(".")[1]) for c in rows if c.name.startswith("layers.")})
        columns = [col for col in TABLE_COLUMNS if any(f"layers.{i}.{col}" in by_name for i in layers)]
        widths = [max(len(col), 7) + 2 for col in columns]
        out = []
        for metric in ("abs", "rel"):
            out.append(f"{stage}: max_{metric} per layer and sub-step ('!' = above threshold on max_{self.metric})")
            out.append("layer " + "".join(col.rjust(w) for col, w in zip(columns, widths)))
            for i in layers:
                cells = [self._cell(by_name.get(f"layers.{i}.{col}"), metric).rjust(w)
                         for col, w in zip(columns, widths)]
                out.append(f"{i:>5} " + "".join(cells))
            outer = [c for c in rows if not c.name.startswith("layers.")]
            out.append("      " + "   ".join(f"{c.name} {self._cell(c, metric).strip()}" for c in outer))
        return out

    def _cell(self, comparison: Comparison | None, metric: str) -> str:
        if comparison is None:
            return "-"
        flag = "!" if comparison.error(self.metric) > self.threshold else " "
        return f"{comparison.error(metric):.1e}{flag}"

    # --- plot ------------------------------------------------------------------
    def plot(self, stage: str = "prefill", metric: str | None = None, ax=None):
        """Error of every intermediate of one stage, in execution order (log scale)."""
        import matplotlib.pyplot as plt
        metric = metric or self.metric
        errors = self.errors(stage, metric)
        if ax is None:
            _, ax = plt.subplots(figsize=(12, 3.5))
        values = np.maximum(np.array(list(errors.values())), 1e-12)
        ax.semilogy(values, marker=".", lw=0.8)
        ax.axhline(self.threshold, color="red", ls="--", lw=0.8, label=f"threshold {self.threshold:g}")
        first_of_layer = {}
        for k, name in enumerate(errors):
            if name.startswith("layers."):
                first_of_layer.setdefault(int(name.split(".")[1]), k)
        ax.set_xticks(list(first_of_layer.values()), [str(i) for i in first_of_layer], fontsize=7)
        ax.set_xlabel("layer (tick = the layer's first sub-step; embed before, final_norm and logits after)")
        ax.set_ylabel(f"max_{metric} error")
        ax.set_title(f"{self.family} {stage}: minilm ({self.backend}) vs transformers")
        ax.legend(loc="upper left")
        return ax


# --- transformers side --------------------------------------------------------

def quiet_reference_imports() -> None:
    """torchao (imported by transformers) logs a line per CUDA library it cannot load, and torch one per
    Enum it registers: noise on a CPU machine, and not about the report. Keep their errors only."""
    import logging
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def quiet_cache_deprecation():
    """transformers 5.23 warns that `past_key_values` is deprecated for `cache`, but its forward still
    ignores `cache=` (a decode step would silently run without its past): keep the working argument,
    without the warning."""
    import warnings
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


class ReferenceUnavailableError(RuntimeError):
    """The reference library cannot run this checkpoint on this machine (a missing compiled kernel)."""


MISSING_OP = re.compile(r"'_OpNamespace' '(\w+)' object has no attribute '(\w+)'")


@contextmanager
def reference_kernels_present(hf_model, model_dir: str):
    """A quantized layer whose kernel exists only in a compiled library this machine lacks (torchao's int4
    matmul, torch.ops.mslk.*, is CUDA-only) is a one-line reason, not an internal error."""
    try:
        yield
    except (AttributeError, NotImplementedError) as e:
        missing = MISSING_OP.search(str(e))
        if missing is None:
            raise
        quantization = getattr(hf_model.config, "quantization_config", None) or {}
        method = quantization.get("quant_method") if isinstance(quantization, dict) else \
            getattr(quantization, "quant_method", None)
        library = getattr(method, "value", method) or "its quantization library"
        raise ReferenceUnavailableError(
            f"{model_dir}: transformers cannot run this checkpoint here: {library}'s kernel "
            f"torch.ops.{missing.group(1)}.{missing.group(2)} is not in this installation (it comes with the "
            "library's CUDA build), so there is no reference to compare with; minilm itself runs the "
            "checkpoint (minilm generate --model ...)") from None


def load_transformers_model(model_dir: str):
    """The reference: transformers, float32, eager attention."""
    quiet_reference_imports()
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()          # the report is the output; no loading bars in it
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.eval()


@contextmanager
def transformers_tape(hf_model):
    """Record transformers' intermediates under minilm's tape names while the block runs.

        with transformers_tape(hf_model) as tape:
            hf_model(input_ids)
        tape["layers.0.attn.q"]      # numpy, [B, T, H, HD]
    """
    import torch  # noqa: F401  (hooks receive torch tensors)
    tape: dict[str, np.ndarray] = {}
    handles, current = [], {"layer": None}
    base = hf_model.model
    head_dim = base.layers[0].self_attn.head_dim

    def save(name, tensor, split_heads=False, heads_first=False):
        if isinstance(tensor, tuple):
            tensor = tensor[0]
        array = tensor.detach().float().cpu().numpy()
        if split_heads:                            # [B, T, N*HD] -> [B, T, N, HD]
            array = array.reshape(*array.shape[:-1], -1, head_dim)
        if heads_first:                            # [B, N, T, HD] -> [B, T, N, HD]
            array = array.transpose(0, 2, 1, 3)
        tape[name] = np.ascontiguousarray(array)

    def on_output(module, name, **kw):
        handles.append(module.register_forward_hook(lambda m, args, out: save(name, out, **kw)))

    def on_input(module, name):
        handles.append(module.register_forward_pre_hook(lambda m, args: save(name, args[0])))

    def probs_hook(i):
        def hook(module, args, out):                # eager attention returns (output, weights [B, H, T, S])
            if isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
                tape[f"layers.{i}.attn.probs"] = out[1].detach().float().cpu().numpy()
        return hook

    def attention_pre_hook(i):
        def hook(module, args, kwargs):
            current["layer"] = i
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dtype != torch.bool:   # eager: additive, 0 = visible
                tape[f"layers.{i}.attn.mask"] = (mask[:, 0] == 0).cpu().numpy()
        return hook

    on_output(base.embed_tokens, "embed")
    for i, layer in enumerate(base.layers):
        p, attn, mlp = f"layers.{i}", layer.self_attn, layer.mlp
        on_output(layer.input_layernorm, f"{p}.attn_norm")
        if hasattr(layer, "post_attention_layernorm"):          # llama: sequential block
            on_output(layer.post_attention_layernorm, f"{p}.mlp_norm")
        handles.append(attn.register_forward_pre_hook(attention_pre_hook(i), with_kwargs=True))
        handles.append(attn.register_forward_hook(probs_hook(i)))
        on_output(attn.q_proj, f"{p}.attn.q", split_heads=True)
        on_output(attn.k_proj, f"{p}.attn.k", split_heads=True)
        on_output(attn.v_proj, f"{p}.attn.v", split_heads=True)
        if getattr(attn, "q_norm", None) is not None:            # cohere qk-norm, on [B, T, N, HD]
            on_output(attn.q_norm, f"{p}.attn.q_norm")
            on_output(attn.k_norm, f"{p}.attn.k_norm")
        on_input(attn.o_proj, f"{p}.attn.context")
        on_output(attn.o_proj, f"{p}.attn.out")
        on_output(mlp.gate_proj, f"{p}.mlp.gate")
        on_output(mlp.up_proj, f"{p}.mlp.up")
        on_input(mlp.down_proj, f"{p}.mlp.act")
        on_output(mlp, f"{p}.mlp.out")
        on_output(layer, f"{p}.out")
    on_output(base.norm, "final_norm")

    # RoPE is a function, not a module: wrap the modeling module's global for the duration.
    modeling = sys.modules[type(base.layers[0].self_attn).__module__]
    original_rope = modeling.apply_rotary_pos_emb

    def recording_rope(q, k, cos, sin, *args, **kwargs):
        q_rot, k_rot = original_rope(q, k, cos, sin, *args, **kwargs)
        i = current["layer"]
        save(f"layers.{i}.attn.q_rope", q_rot, heads_first=True)
        save(f"layers.{i}.attn.k_rope", k_rot, heads_first=True)
        return q_rot, k_rot

    modeling.apply_rotary_pos_emb = recording_rope
    try:
        yield tape
    finally:
        modeling.apply_rotary_pos_emb = original_rope
        for handle in handles:
            handle.remove()


class Reference:
    """transformers' value at a tape name for the same input: the other half of a debugging session.

        ref = Reference(model.path)                  # folder, hub id, or a loaded transformers model
        ref.at("layers.3.attn.q_rope", ids)          # numpy, minilm's layout, like out.tape[name]

    transformers runs float32 eager attention without a cache on `ids` (a prefill); its
    intermediates come from `transformers_tape`. The last input's tape is kept, so asking for
    several names at one stop costs one forward. For a cached decode step pass every token so
    far and keep the last T positions: `ref.at(name, all_ids)[:, -T:]`.
    """

    def __init__(self, model_dir_or_hf_model):
        if isinstance(model_dir_or_hf_model, (str, os.PathLike)):
            model_dir_or_hf_model = load_transformers_model(resolve_model_dir(str(model_dir_or_hf_model)))
        self.hf_model = model_dir_or_hf_model
        self._key, self._tape = None, None

    def tape(self, ids, attention_mask=None) -> dict[str, np.ndarray]:
        """Every name transformers' hooks see for this input (and "logits")."""
        import torch
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        mask = None if attention_mask is None else np.asarray(attention_mask, dtype=np.int64).reshape(ids.shape)
        key = (ids.shape, ids.tobytes(), None if mask is None else mask.tobytes())
        if key != self._key:
            with torch.no_grad(), transformers_tape(self.hf_model) as tape:
                out = self.hf_model(input_ids=torch.as_tensor(ids),
                                    attention_mask=None if mask is None else torch.as_tensor(mask))
            tape["logits"] = out.logits.float().numpy()
            self._key, self._tape = key, tape
        return self._tape

    def at(self, name: str, ids, attention_mask=None) -> np.ndarray:
        tape = self.tape(ids, attention_mask)
        if name not in tape:
            close = difflib.get_close_matches(name, list(tape), n=5, cutoff=0.5)
            raise KeyError(f"transformers' hooks record no {name!r}"
                           + (f"; close matches: {', '.join(close)}" if close else " (names: docs/tape.md)"))
        return tape[name]


def reference_value(model_dir_or_hf_model, ids, name: str, attention_mask=None) -> np.ndarray:
    """One name, once: `Reference(model_dir_or_hf_model).at(name, ids)` (loads transformers each call)."""
    return Reference(model_dir_or_hf_model).at(name, ids, attention_mask)


# --- comparing -----------------------------------------------------------------

def compare_tapes(ours: dict, reference: dict, stage: str) -> list[Comparison]:
    """Every name both tapes hold (minilm's execution order), masks excepted."""
    out = []
    for name, a in ours.items():
        if name not in reference or name.endswith(SKIPPED):
            continue
        b = reference[name]
        if a.shape != b.shape:
            out.append(Comparison(stage, name, tuple(a.shape), float("inf"), float("inf")))
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(b).max()) if b.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        out.append(Comparison(stage, name, tuple(a.shape), max_abs, max_rel))
    return out


def _top2_gap(logits: np.ndarray) -> float:
    top = np.sort(logits.astype(np.float64))[-2:]
    return float(top[1] - top[0])


def _prompt_ids(model_dir: str, prompt, config) -> list[int]:
    """Text through the folder's tokenizer; token ids as given; or a fixed id prompt."""
    if prompt is not None and not isinstance(prompt, str):
        ids = [int(t) for t in np.asarray(prompt).reshape(-1)]
    else:
        tokenizer = _maybe_tokenizer(model_dir)
        if tokenizer is not None:
            ids = tokenizer.encode(prompt or DEFAULT_PROMPT)
        elif prompt is not None:
            raise ValueError(f"{model_dir} has no tokenizer: pass the prompt as token ids")
        else:
            # Tokenizer-less folders (tiny test models): a fixed, reproducible id prompt.
            ids = np.random.default_rng(0).integers(3, config.vocab_size, size=12).tolist()
    if not ids:
        raise ValueError("the prompt is empty")
    bad = [t for t in ids if not 0 <= t < config.vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {config.vocab_size})")
    return ids


def _maybe_tokenizer(model_dir: str):
    if not any(os.path.exists(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        from .tokenizer import Tokenizer
        return Tokenizer.from_pretrained(model_dir)
    except Exception:  # a folder whose tokenizer minilm cannot read still gets an id prompt
        return None


def parity_report(model_dir: str, prompt=None, decode_steps: int = 3, threshold: float = 1e-4,
                  backend: str = "numpy", metric: str = "rel", model=None, hf_model=None) -> ParityReport:
    """Run minilm and transformers side by side; per-stage, per-intermediate errors.

    prompt: text (needs the folder's tokenizer), token ids, or None (a default text, or a
    fixed id prompt when the folder has no tokenizer). model / hf_model: already loaded
    models to use instead of loading `model_dir` (e.g. a deliberately corrupted minilm copy).
    """
    import torch
    import minilm

    if decode_steps < 0:
        raise ValueError(f"decode_steps={decode_steps} must be >= 0")
    if metric not in ("rel", "abs"):
        raise ValueError(f"metric={metric!r} must be 'rel' or 'abs'")
    model = model if model is not None else minilm.load(model_dir, backend=backend, progress=False)
    if model.config.is_sequence_classifier:
        raise ValueError(f"{model_dir}: the parity report covers causal LMs, not sequence classifiers")
    hf_model = hf_model if hf_model is not None else load_transformers_model(model_dir)
    ids = _prompt_ids(model_dir, prompt, model.config)
    report = ParityReport(str(model_dir), model.config.model_type, model.backend.name, threshold, metric, ids)

    cache, hf_cache = model.new_cache(1), None
    step_ids = np.asarray([ids], dtype=np.int64)
    for step in range(decode_steps + 1):
        stage = "prefill" if step == 0 else f"decode {step}"
        ours = model(step_ids, cache=cache, tape=True)
        with torch.no_grad(), transformers_tape(hf_model) as reference, quiet_cache_deprecation(), \
                reference_kernels_present(hf_model, model_dir):
            hf_out = hf_model(input_ids=torch.as_tensor(step_ids), past_key_values=hf_cache, use_cache=True)
        hf_cache = hf_out.past_key_values
        reference["logits"] = hf_out.logits.float().numpy()
        report.comparisons.extend(compare_tapes(ours.tape, reference, stage))

        ref_logits, our_logits = reference["logits"][0, -1], ours.logits[0, -1]
        ref_token, our_token = int(np.argmax(ref_logits)), int(np.argmax(our_logits))
        report.tokens.append(TokenCheck(
            stage, ref_token, our_token, _top2_gap(ref_logits),
            float(our_logits[our_token]) - float(our_logits[ref_token]) if our_token != ref_token
            else _top2_gap(our_logits),
            float(np.abs(our_logits.astype(np.float64) - ref_logits).max())))
        step_ids = np.asarray([[ref_token]], dtype=np.int64)   # both engines continue with transformers' token
    return report


# --- CLI -------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint folder, hub id or .gguf (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--prompt", default=None,
                        help=f"prompt text (default {DEFAULT_PROMPT!r}; a fixed id prompt if the folder has no "
                             "tokenizer)")
    parser.add_argument("--ids", default=None, help="prompt as comma-separated token ids instead of text")
    parser.add_argument("--steps", type=int, default=3, help="cached greedy decode steps after the prefill")
    parser.add_argument("--threshold", type=float, default=1e-4, help="error that counts as a jump")
    parser.add_argument("--metric", choices=("rel", "abs"), default="rel",
                        help="which error the threshold applies to (default rel = max_abs / max|reference|)")
    parser.add_argument("--backend", default="numpy", help="minilm backend: numpy, numba, cuda, cuda-emulated")


def main(args) -> int:
    """Print the report; exit status 1 if an intermediate jumps or a greedy token differs."""
    model_dir = resolve_model_dir(args.model)
    prompt = args.prompt
    if getattr(args, "ids", None):
        try:
            prompt = [int(t) for t in args.ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise ValueError(f"--ids={args.ids!r} must be comma-separated integers") from None
    report = parity_report(model_dir, prompt=prompt, decode_steps=args.steps, threshold=args.threshold,
                           backend=args.backend, metric=args.metric)
    print(report.format())
    return 0 if report.ok else 1
