"""Plain-text tables for terminal output: first column left-aligned, the rest right-aligned."""

from __future__ import annotations

from typing import Sequence


def table(header: Sequence, rows: Sequence[Sequence]) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in cells]
