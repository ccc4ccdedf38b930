"""One table renderer for every table dlkit prints or writes: aligned text or Markdown.

A table is a list of columns (a title, how to align, how to turn a row into a cell) and a list
of rows of any kind, so one column list serves the terminal and the report alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """`cell(row)` gives the text; `align` is "<" (left) or ">" (right)."""

    title: str
    cell: Callable[[Any], str]
    align: str = ">"


def render_text(columns: Sequence[Column], rows: Sequence[Any], indent: str = "") -> list[str]:
    """Aligned plain-text lines: the header, then one line per row."""
    cells = [[c.title for c in columns]] + [[c.cell(r) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        text = [
            value.ljust(w) if c.align == "<" else value.rjust(w)
            for c, value, w in zip(columns, line, widths, strict=True)
        ]
        lines.append((indent + "  ".join(text)).rstrip())
    return lines


def render_markdown(columns: Sequence[Column], rows: Sequence[Any]) -> list[str]:
    """A Markdown table: header, separator, one line per row (pipes in cells escaped)."""

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    out = [line([c.title for c in columns]), "|" + "|".join(" --- " for _ in columns) + "|"]
    return out + [line([c.cell(r) for c in columns]) for r in rows]


def fmt(value: float | None, spec: str, missing: str = "–") -> str:
    """`format(value, spec)`, or `missing` for None."""
    return missing if value is None else format(value, spec)
