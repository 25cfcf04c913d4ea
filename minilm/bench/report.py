"""Plain-text tables for the benchmark reports."""
from __future__ import annotations


def gb(n) -> str:
    return "-" if n is None else (f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB")


def ratio(r, key) -> str:
    value = r.get(key)
    return "-" if value is None else f"{value:.2f}x"


def table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines
