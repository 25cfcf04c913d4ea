"""Stopping a forward pass at a named intermediate (docs/debugging.md).

    model(ids, stop_at="layers.3.attn.q_rope")          # the debugger opens where q_rope was computed
    model(ids, on_record=lambda name, value: print(name, value.shape))

The names are the tape's (docs/tape.md). Every recording site calls
`DecoderModel.record`, which hands (name, value) to the hook built here; the
value is the backend's array (numpy, or cupy on "cuda"), not a copy.

Where the debugger opens: in the frame of the model code that computed the
value (`self_attention`, `mlp`, ...), on the line after its `record` call, so
`q`, `k`, `x`, `ctx` are in scope. Plain pdb (no PYTHONBREAKPOINT) is opened
on that frame; VS Code and PyCharm (pydevd, whose breakpoint hook accepts
`stop_at_frame`) get `breakpoint(stop_at_frame=frame)`. Any other debugger
(PYTHONBREAKPOINT=ipdb.set_trace, ...) gets a plain `breakpoint()`: it stops
in `stop`, two frames above the model code (`up` twice). PYTHONBREAKPOINT=0
turns stopping off, as for any breakpoint().
"""
from __future__ import annotations

import difflib
import os
import pdb
import sys

import numpy as np


def tape_names(model) -> list[str]:
    """Every name a forward of `model` records, in order (found by running one token: the model code
    is the only definition of the names). Remembered per model."""
    if getattr(model, "_tape_names", None) is None:
        names = []
        model(np.zeros((1, 1), dtype=np.int64), on_record=lambda name, value: names.append(name))
        model._tape_names = names
    return model._tape_names


def check_tape_name(model, name: str) -> None:
    """A clear error for a name no forward records, with the closest real names."""
    names = tape_names(model)
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else f"names look like {names[1]!r} or {names[-1]!r}"
    layer = ".".join(name.split(".")[:2]) + "."
    same_layer = [n[len(layer):] for n in names if n.startswith(layer)]
    if name.startswith("layers.") and same_layer:          # e.g. no q_rope on a NoPE layer
        hint += f"; {layer[:-1]} records {', '.join(same_layer)}"
    raise ValueError(f"stop_at={name!r} is not recorded by this {model.config.model_type} model "
                     f"({model.config.num_hidden_layers} layers); {hint} (all names: docs/tape.md)")


def uses_plain_pdb() -> bool:
    """True when breakpoint() would open the standard pdb: no IDE hook and no PYTHONBREAKPOINT choice."""
    return sys.breakpointhook is sys.__breakpointhook__ and \
        os.environ.get("PYTHONBREAKPOINT", "") in ("", "pdb.set_trace")


def hook_takes_a_frame() -> bool:
    """True for pydevd's breakpoint hook (VS Code's debugpy, PyCharm): breakpoint(stop_at_frame=...) works."""
    name = getattr(sys.breakpointhook, "__name__", "")
    return name in ("pydevd_breakpointhook", "custom_sitecustomize_breakpointhook") and \
        not os.environ.get("PYTHONBREAKPOINT")          # with it set, pydevd hands over to that debugger


def model_frame():
    """The frame of the model code that called `record` (the hook runs inside record)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "record":
        frame = frame.f_back
    return frame.f_back


def stop_hook(name: str):
    """A hook that opens the debugger when `name` is recorded."""
    def stop(recorded: str, value) -> None:
        if recorded != name or os.environ.get("PYTHONBREAKPOINT") == "0":   # 0: every breakpoint() is off
            return
        frame = model_frame()
        print(f"minilm: stopped at {name} {list(value.shape)} {value.dtype}, computed in "
              f"{frame.f_code.co_name}() ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})")
        if uses_plain_pdb():
            pdb.Pdb().set_trace(frame)             # opens in the model code's frame, at its next line
        elif hook_takes_a_frame():
            breakpoint(stop_at_frame=frame)        # VS Code, PyCharm: the same frame
        else:
            breakpoint()                           # another debugger: stops here; `up` twice is the model code
    return stop


def debug_hook(model, stop_at: str | None, on_record):
    """The record hook for a forward: None (the usual case: nothing to call), on_record, a stop, or both."""
    if stop_at is None:
        return on_record
    check_tape_name(model, stop_at)
    stop = stop_hook(stop_at)
    if on_record is None:
        return stop

    def both(name, value):
        on_record(name, value)
        stop(name, value)
    return both
