"""A tiny stderr progress bar, so minilm needs no tqdm.

    bar = ProgressBar(total=272, desc="converting")
    for tensor in tensors:
        ...
        bar.update()
    bar.close()

A `ProgressBar` is also a callable `(done, total, label)` for code that takes a
progress callback.
"""
from __future__ import annotations

import sys
import time

BAR_WIDTH = 30
MIN_REDRAW_SECONDS = 0.1  # redrawing on every step would slow down fast loops


class ProgressBar:
    def __init__(self, total: int, desc: str = "", stream=None, enabled: bool = True):
        self.total = max(int(total), 0)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.label = ""
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._closed = False
        # In a log file, \r redraws pile up: draw only the final line there.
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, steps: int = 1, label: str | None = None) -> None:
        self.done = min(self.done + steps, self.total) if self.total else self.done + steps
        if label is not None:
            self.label = label
        self._draw()

    def __call__(self, done: int, total: int, label: str = "") -> None:
        # Callback form: absolute position instead of a step.
        self.total, self.done, self.label = int(total), int(done), label
        if self.done >= self.total:
            self.close()
        else:
            self._draw()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(self) -> str:
        """One line, e.g. `converting [#########.....................]  90/272  1.2s  blk.10`."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(fraction * BAR_WIDTH))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        elapsed = time.monotonic() - self._start
        width = len(str(self.total))
        line = f"{self.desc} [{bar}] {self.done:>{width}}/{self.total} {elapsed:5.1f}s"
        return f"{line}  {self.label}" if self.label else line

    def _draw(self, force: bool = False) -> None:
        if not self.enabled or not (force or self._interactive):
            return
        now = time.monotonic()
        if not force and now - self._last_draw < MIN_REDRAW_SECONDS:
            return
        self._last_draw = now
        # \r returns to the line start; \x1b[K clears what a longer label left behind.
        clear = "\r\x1b[K" if self._interactive else ""
        self.stream.write(clear + self.render())
        self.stream.flush()
