"""The leaderboard as tables for a paper: ``harness leaderboard --format latex|markdown [--ci] [--by category]``.

A table has a row per method (the base first) and a column per suite and metric, the metric's
version in its header; with ``--by category``, one table per suite with a column per metric and
category, the category's prompt count in its header (few prompts, wide CIs: shown, not hidden).
A cell is the mean, with its 95 % bootstrap CI when asked; the best value of each column is in
bold, best meaning highest or lowest by the metric's direction (``harness.stats.best_flags``); a
mean of a metric the method was trained on carries the dagger (``harness.stats.SIGNAL_NOTE``).
Every name (methods, categories, metrics) is escaped for the target format.  The LaTeX needs
nothing beyond the LaTeX kernel (no booktabs), so it compiles wherever LaTeX does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.stats import LOWER_MARK, SIGNAL_MEANING, SIGNAL_NOTE, best_flags, higher_is_better_of

FORMATS = ("latex", "markdown")
CI_NOTE = "95% bootstrap CI over prompts in brackets; a single prompt has none (–)"


def metric_label(metric: str, version: str, higher_is_better: bool = True) -> str:
    """Column header of a metric: versions are separate metrics and always shown; a lower-is-better
    metric is marked so."""
    return f"{metric} ({version})" + ("" if higher_is_better else f" {LOWER_MARK}")


@dataclass
class Column:
    """One column: its header's two lines and the leaderboard row of each method in it."""

    group: str  # a suite (overall) or a metric (by category): the header's first line, spanning its columns
    title: str  # a metric, or a category with its prompt count
    rows: dict[str, dict] = field(default_factory=dict)


@dataclass
class PaperTable:
    title: str
    methods: list[str]
    columns: list[Column]

    @property
    def marked(self) -> bool:
        return any(row.get("trained_on_signal") for column in self.columns for row in column.rows.values())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def paper_tables(rows: Sequence[dict], base: str = "base", by: str | None = None) -> list[PaperTable]:
    """``harness.stats.leaderboard`` rows (made with ``by=[by]`` when ``by`` is given) as tables."""
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != base, m))
    if by is None:
        return [PaperTable("Mean score per method", methods, _columns(rows, group="suite"))]
    return [PaperTable(f"{suite}: mean score per {by}", methods,
                       _columns([r for r in rows if r["suite"] == suite], group="metric", by=by))
            for suite in sorted({r["suite"] for r in rows})]


def _columns(rows: Sequence[dict], *, group: str, by: str | None = None) -> list[Column]:
    columns: dict[tuple, Column] = {}
    for row in sorted(rows, key=lambda r: (r["suite"], r["metric"], r["metric_version"], str(r.get(by) or ""))):
        label = metric_label(row["metric"], row["metric_version"], higher_is_better_of(row))
        part = str(row.get(by) or f"no {by}") if by else None
        key = (row["suite"], label, part)
        if key not in columns:
            columns[key] = Column(group=row["suite"] if group == "suite" else label, title=part or label)
        columns[key].rows[row["method"]] = row
    if by:
        for column in columns.values():
            n = max(row["n_prompts"] for row in column.rows.values())
            column.title = f"{column.title} ({_plural(n, 'prompt')})"
    return list(columns.values())


def _decimals(values: Sequence[float]) -> int:
    """Decimals that give the column's largest value four significant digits, the same on every row."""
    largest = max((abs(v) for v in values if v), default=1.0)
    return max(0, 3 - math.floor(math.log10(largest)))


@dataclass
class Cell:
    mean: str
    ci: str | None  # None: no interval (a single prompt)
    best: bool
    marked: bool


def _cells(column: Column, methods: Sequence[str]) -> dict[str, Cell]:
    present = [m for m in methods if m in column.rows]
    means = [column.rows[m]["mean"] for m in present]
    higher = higher_is_better_of(column.rows[present[0]])
    digits = _decimals(means)
    cells = {}
    for method, best in zip(present, best_flags(means, higher)):
        row = column.rows[method]
        low, high = row["ci_low"], row["ci_high"]
        ci = None if low is None or high is None else f"[{low:.{digits}f}, {high:.{digits}f}]"
        cells[method] = Cell(f"{row['mean']:.{digits}f}", ci, best, bool(row.get("trained_on_signal")))
    return cells


def _groups(columns: Sequence[Column]) -> list[tuple[str, int]]:
    """(group, how many columns) for runs of consecutive columns of one group."""
    spans: list[tuple[str, int]] = []
    for column in columns:
        if spans and spans[-1][0] == column.group:
            spans[-1] = (column.group, spans[-1][1] + 1)
        else:
            spans.append((column.group, 1))
    return spans


# -- LaTeX -----------------------------------------------------------------------------------------
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX prints it literally."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_cell(cell: Cell | None, ci: bool) -> str:
    if cell is None:
        return "--"
    text = rf"\textbf{{{cell.mean}}}" if cell.best else cell.mean
    text += r"\dag{}" if cell.marked else ""
    if ci:
        text += r" {\scriptsize " + ("[--]" if cell.ci is None else cell.ci) + "}"
    return text


def to_latex(tables: Sequence[PaperTable], ci: bool = False) -> str:
    return "\n\n".join(_latex_table(table, ci) for table in tables)


def _latex_table(table: PaperTable, ci: bool) -> str:
    notes = ["Best value per column in bold."]
    if ci:
        notes.append(latex_escape(CI_NOTE).replace("–", "--") + ".")
    if table.marked:
        notes.append(r"\dag{} " + latex_escape(SIGNAL_MEANING) + ".")
    cells = [_cells(column, table.methods) for column in table.columns]
    groups = " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(group)}}}" for group, n in _groups(table.columns))
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.title)}. {' '.join(notes)}}}",
        rf"\begin{{tabular}}{{l{'r' * len(table.columns)}}}",
        r"\hline",
        rf" & {groups} \\",
        "method & " + " & ".join(latex_escape(column.title) for column in table.columns) + r" \\",
        r"\hline",
    ]
    for method in table.methods:
        values = [_latex_cell(column.get(method), ci) for column in cells]
        lines.append(f"{latex_escape(method)} & {' & '.join(values)} \\\\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


# -- Markdown --------------------------------------------------------------------------------------
_MARKDOWN_SPECIAL = set("\\`*_[]<>|#")


def markdown_escape(text: str) -> str:
    """``text`` as Markdown (GitHub's tables included) shows it literally."""
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in text)


def _markdown_cell(cell: Cell | None, ci: bool) -> str:
    if cell is None:
        return "–"
    text = f"**{cell.mean}**" if cell.best else cell.mean
    text += "†" if cell.marked else ""
    if ci:
        text += " " + ("[–]" if cell.ci is None else cell.ci)
    return text


def to_markdown(tables: Sequence[PaperTable], ci: bool = False) -> str:
    return "\n\n".join(_markdown_table(table, ci) for table in tables)


def _markdown_table(table: PaperTable, ci: bool) -> str:
    notes = ["best value per column in bold"] + ([CI_NOTE] if ci else [])
    cells = [_cells(column, table.methods) for column in table.columns]
    headers = [markdown_escape(f"{column.group} · {column.title}") for column in table.columns]
    lines = [
        f"**{markdown_escape(table.title)}** ({'; '.join(notes)})",
        "",
        f"| method | {' | '.join(headers)} |",
        "|:--|" + "--:|" * len(headers),
    ]
    for method in table.methods:
        lines.append(f"| {markdown_escape(method)} | {' | '.join(_markdown_cell(c.get(method), ci) for c in cells)} |")
    if table.marked:
        lines += ["", markdown_escape(SIGNAL_NOTE)]
    return "\n".join(lines)
