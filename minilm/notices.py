"""One line on stderr before every wait of more than a couple of seconds: what is happening, roughly how long.

    minilm: compiling the Numba kernels of attention for this CPU (first run only, ...)
    minilm: converting SmolLM2-135M-Instruct.Q4_1.gguf into float32 safetensors (once, ...)
    minilm: building the CUDA emulation harness for rmsnorm.cu with g++ (once per kernel source, ...)

Numba compiles a kernel the first time it is called with new argument types and caches the
machine code (next to the module, or in $NUMBA_CACHE_DIR); its "numba:compile" event fires only
on a real compilation, never on a cache hit, so a warm cache prints nothing.
"""
from __future__ import annotations

import sys

# Measured on the 2-core development VM with a cold cache: one kernel group (a minilm.ops.numba_* module)
# compiles in 2 to 30 s, all of them in about a minute and a half.
NUMBA_GROUP_TIME = "first run only, 2-30 s per kernel group, about 1.5 min in all; cached for later runs"


def notice(what: str, how_long: str) -> None:
    """`minilm: WHAT (HOW_LONG)` on stderr, at once (even when stderr is a file or a pipe)."""
    print(f"minilm: {what} ({how_long})", file=sys.stderr, flush=True)


def kernel_group(module: str) -> str | None:
    """'minilm.ops.numba_attention' -> 'attention'; None for code outside minilm's Numba kernels."""
    prefix = "minilm.ops.numba_"
    return module[len(prefix):] if module.startswith(prefix) else None


_announced: set[str] = set()


def announce_compile(data) -> None:
    """The notice for a "numba:compile" event's data, once per kernel group."""
    dispatcher = data.get("dispatcher") if isinstance(data, dict) else None
    group = kernel_group(getattr(getattr(dispatcher, "py_func", None), "__module__", "") or "")
    if group is not None and group not in _announced:
        _announced.add(group)
        notice(f"compiling the Numba kernels of {group} for this CPU", NUMBA_GROUP_TIME)


_listening = False


def announce_numba_compiles() -> None:
    """Print one notice per kernel group the first time Numba compiles (not loads) one of its kernels."""
    global _listening
    if _listening:
        return
    from numba.core import event

    class CompileListener(event.Listener):
        def on_start(self, started) -> None:
            announce_compile(started.data)

        def on_end(self, ended) -> None:
            pass

    event.register("numba:compile", CompileListener())
    _listening = True
