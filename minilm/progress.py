"""Progress bars for long work (loading, converting, writing checkpoints), drawn by tqdm on stderr.

On a terminal the bar redraws as work goes on; in a log or a pipe it writes only
its first and last state, so logs get the outcome without redraw noise.
"""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "tensor"):
    """A tqdm bar on stderr; use it as a context manager and call .update(n)."""
    interactive = sys.stderr.isatty() if hasattr(sys.stderr, "isatty") else False
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=True, file=sys.stderr,
                dynamic_ncols=interactive, mininterval=0.1 if interactive else float("inf"))
