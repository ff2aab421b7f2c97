"""Plain-text tables of the listings (`harness methods`, `scorers`, `presets`, `suites`, `runs`, the leaderboard)."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` as columns two spaces apart, each as wide as its widest cell.

    A row's last cell is never padded, so it does not widen its column: a row may stop early and let
    its last cell (a description, an error) run on without pushing the other rows' columns right.
    """
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return "\n".join(
        "  ".join([*(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])), *row[-1:]]).rstrip() for row in rows
    )
