"""The leaderboard as tables for a paper: ``harness leaderboard --format latex|markdown [--columns ...] [--ci]
[--by category]``.

A table has a row per method (each experiment's base first, experiments in the order given) and, per
suite and metric, a column per statistic asked (``--columns``): the mean, Δ vs the base (method − base,
paired image by image) and the win rate vs the base (the share of prompts whose median image beats the
base's), each with its 95 % interval under ``--ci`` (bootstrap over prompts for the mean and Δ, Wilson
for the win rate).  With ``--by category``, one table per suite with the columns per metric and the rows
per category and method, each category headed by its prompt count (few prompts, wide CIs: shown, not
hidden), so that the table grows down the page with the categories, not across it.  The best value
of each column (within a category) is in bold, best by the metric's direction
(``harness.results.stats.best_flags``); a mean of a metric the method was trained on carries the dagger
(``harness.results.stats.SIGNAL_NOTE``).  A metric's version is in its header only where the table holds it
in several versions (else the caption names the versions once).  Every name is escaped for the
target format.  The LaTeX needs the LaTeX kernel and graphicx, which every distribution has: a table
wider than the text is scaled down to its width, and one longer than a page is split between
categories into floats of a page each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.results.experiments import SEPARATOR
from harness.results.stats import LOWER_MARK, LOWER_NOTE, SIGNAL_NOTE, best_flags, higher_is_better_of

FORMATS = ("latex", "markdown")
# The statistics a table can show per suite and metric (``--columns``), and what a paper shows by default.
STATISTICS = ("mean", "delta", "win")
DEFAULT_STATISTICS = STATISTICS
CI_NOTE = (
    "95% intervals in brackets: bootstrap over prompts for means and Δ, Wilson for win rates; "
    "a single prompt has none (–)"
)
DELTA_NOTE = "Δ: method − base, paired on prompt, image and seed"
WIN_NOTE = "win: % of prompts where the method's median image beats the base's"


def metric_label(metric: str, version: str, higher_is_better: bool = True) -> str:
    """A metric with its version (versions are separate metrics), a lower-is-better one marked so."""
    return f"{metric} ({version})" + ("" if higher_is_better else f" {LOWER_MARK}")


def _short_label(metric: str, version: str, higher_is_better: bool, versioned: bool) -> str:
    """A paper table's header of a metric: the version only where ``versioned`` (the table holds several)."""
    if versioned:
        return metric_label(metric, version, higher_is_better)
    return metric + ("" if higher_is_better else f" {LOWER_MARK}")


def check_statistics(statistics: Sequence[str]) -> tuple[str, ...]:
    """``--columns``: some of ``STATISTICS``, each once."""
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        raise HarnessError(
            f"--columns: unknown column {', '.join(unknown) or '(none)'}; expected some of {', '.join(STATISTICS)}"
        )
    return tuple(dict.fromkeys(statistics))


@dataclass
class Column:
    """One suite and metric: its header and the leaderboard row of each (block, method) in it."""

    group: str | None  # a suite (overall; None by category: the table's own): a header line spanning its columns
    title: str  # the metric
    rows: dict[tuple[str | None, str], dict] = field(default_factory=dict)


@dataclass
class PaperTable:
    title: str
    methods: list[str]
    columns: list[Column]
    versions: dict[str, list[str]]  # metric -> its versions in the table
    blocks: list[str | None] = field(default_factory=lambda: [None])  # categories (with prompt counts), or None

    @property
    def marked(self) -> bool:
        return any(row.get("trained_on_signal") for column in self.columns for row in column.rows.values())

    @property
    def lower(self) -> bool:
        return any(not higher_is_better_of(row) for column in self.columns for row in column.rows.values())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def method_order(rows: Sequence[dict], base: str = "base") -> list[str]:
    """The methods of leaderboard rows: experiments in the order their rows come (the order given), each
    with its base first, then by name."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    experiments = list(dict.fromkeys(m.rpartition(SEPARATOR)[0] for m in methods))
    return sorted(
        methods, key=lambda m: (experiments.index(m.rpartition(SEPARATOR)[0]), m.rpartition(SEPARATOR)[2] != base, m)
    )


def paper_tables(rows: Sequence[dict], base: str = "base", by: str | None = None) -> list[PaperTable]:
    """``harness.results.stats.leaderboard`` rows (made with ``by=[by]`` when ``by`` is given) as tables."""
    methods = method_order(rows, base)
    versions: dict[str, list[str]] = {}
    for row in rows:
        versions.setdefault(row["metric"], [])
        if row["metric_version"] not in versions[row["metric"]]:
            versions[row["metric"]].append(row["metric_version"])
    if by is None:
        return [PaperTable("Leaderboard", methods, _columns(rows, versions), versions)]
    tables = []
    for suite in sorted({r["suite"] for r in rows}):
        own = [r for r in rows if r["suite"] == suite]
        prompts: dict[str, int] = {}
        for row in own:
            part = _part(row, by)
            prompts[part] = max(prompts.get(part, 0), row["n_prompts"])
        blocks = {part: f"{part} ({_plural(n, 'prompt')})" for part, n in sorted(prompts.items())}
        tables.append(
            PaperTable(
                f"{suite} by {by}",
                methods,
                _columns(own, versions, by=by, blocks=blocks),
                versions,
                list(blocks.values()),
            )
        )
    return tables


def _part(row: dict, by: str) -> str:
    return str(row.get(by) or f"no {by}")


def _columns(
    rows: Sequence[dict], versions: dict[str, list[str]], *, by: str | None = None, blocks: dict[str, str] | None = None
) -> list[Column]:
    columns: dict[tuple, Column] = {}
    for row in sorted(rows, key=lambda r: (r["suite"], r["metric"], r["metric_version"])):
        label = _short_label(
            row["metric"], row["metric_version"], higher_is_better_of(row), len(versions[row["metric"]]) > 1
        )
        key = (row["suite"], label)
        if key not in columns:
            columns[key] = Column(group=None if by else row["suite"], title=label)
        columns[key].rows[(blocks[_part(row, by)] if by else None, row["method"])] = row
    return list(columns.values())


def _decimals(values: Sequence[float]) -> int:
    """Decimals that give the column's largest value four significant digits, the same on every row."""
    largest = max((abs(v) for v in values if v), default=1.0)
    return max(0, 3 - math.floor(math.log10(largest)))


@dataclass
class Cell:
    value: str
    ci: str | None  # None: no interval (a single prompt)
    best: bool
    marked: bool


# Per statistic: the row's value and interval fields, and whether larger is better whatever the metric.
_FIELDS = {
    "mean": ("mean", "ci_low", "ci_high"),
    "delta": ("delta_vs_base", "delta_ci_low", "delta_ci_high"),
    "win": ("win_rate_vs_base", "win_ci_low", "win_ci_high"),
}


def _cells(column: Column, methods: Sequence[str], statistic: str, block: str | None) -> dict[str, Cell]:
    """The cells of one statistic of a column in a block; a method without that statistic (the base's Δ) has none.
    Bold marks the best of the block."""
    value, low, high = _FIELDS[statistic]
    rows = {m: column.rows[block, m] for m in methods if (block, m) in column.rows}
    present = [m for m in rows if rows[m].get(value) is not None]
    if not present:
        return {}
    higher = statistic == "win" or higher_is_better_of(rows[present[0]])
    if statistic == "win":
        scale, digits, sign = 100.0, 1, ""  # percent
    else:
        # Δ in the mean's units and decimals (the same in every block): the two read against each other.
        scale, sign = 1.0, "+" if statistic == "delta" else ""
        digits = _decimals([row["mean"] for row in column.rows.values()])
    # Best among the values as printed: two numbers that read the same are both bold, or neither.
    values = [round(scale * rows[m][value], digits) for m in present]
    cells = {}
    for method, best in zip(present, best_flags(values, higher)):
        row = rows[method]
        ci = (
            None
            if row[low] is None or row[high] is None
            else f"[{scale * row[low]:{sign}.{digits}f}, {scale * row[high]:{sign}.{digits}f}]"
        )
        cells[method] = Cell(
            f"{scale * row[value]:{sign}.{digits}f}",
            ci,
            best,
            statistic == "mean" and bool(row.get("trained_on_signal")),
        )
    return cells


def _groups(columns: Sequence[Column]) -> list[tuple[str | None, int]]:
    """(group, how many columns) for runs of consecutive columns of one group."""
    spans: list[tuple[str | None, int]] = []
    for column in columns:
        if spans and spans[-1][0] == column.group:
            spans[-1] = (column.group, spans[-1][1] + 1)
        else:
            spans.append((column.group, 1))
    return spans


def _notes(table: PaperTable, statistics: Sequence[str], ci: bool) -> list[str]:
    """The caption's sentences, plain text: what the columns and marks mean."""
    notes = ["Best value per column in bold"]
    notes += [
        note
        for note, shown in ((DELTA_NOTE, "delta" in statistics), (WIN_NOTE, "win" in statistics), (CI_NOTE, ci))
        if shown
    ]
    single = {metric: versions[0] for metric, versions in table.versions.items() if len(versions) == 1}
    if single:
        notes.append("Metric versions: " + ", ".join(f"{metric} {version}" for metric, version in single.items()))
    return notes


def _table_rows(table: PaperTable, statistics: Sequence[str]) -> list[tuple[str | None, str, list[Cell | None]]]:
    """(block, method, its cells left to right) of each row, in order: blocks, then methods."""
    rows = []
    for block in table.blocks:
        cells = [[_cells(column, table.methods, s, block) for s in statistics] for column in table.columns]
        rows += [(block, method, [part.get(method) for column in cells for part in column]) for method in table.methods]
    return rows


# -- LaTeX -----------------------------------------------------------------------------------------
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_TEXT = {"–": "--", "−": "--", "Δ": r"$\Delta$", "↓": r"$\downarrow$", "†": r"\dag{}"}
_LATEX_HEADERS = {"mean": "mean", "delta": r"$\Delta$", "win": r"win \%"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX prints it literally (the symbols the tables use turned into LaTeX's own)."""
    return "".join(_LATEX_SPECIAL.get(char) or _LATEX_TEXT.get(char, char) for char in text)


def _latex_cell(cell: Cell | None) -> str:
    if cell is None:
        return "--"
    text = rf"\textbf{{{cell.value}}}" if cell.best else cell.value
    return text + (r"\dag{}" if cell.marked else "")


def _latex_ci(cell: Cell | None) -> str:
    if cell is None:
        return ""
    return r"{\scriptsize " + ("[--]" if cell.ci is None else cell.ci) + "}"


# Body lines (a method's values, its intervals, a category's heading) one float holds below its caption and
# header on an article's page (10 pt, 550 pt of text, about 12 pt a line): a longer per-category table is
# split between categories into floats of its own, each headed by the columns again.
LATEX_LINES_PER_FLOAT = 36


def to_latex(tables: Sequence[PaperTable], ci: bool = False, statistics: Sequence[str] = DEFAULT_STATISTICS) -> str:
    statistics = check_statistics(statistics)
    return "\n\n".join(_latex_table(table, ci, statistics) for table in tables)


def _chunks(table: PaperTable, ci: bool) -> list[list[str | None]]:
    """The table's blocks, in runs that fit a float (at least one block each)."""
    per_block = (1 if table.blocks != [None] else 0) + len(table.methods) * (2 if ci else 1)
    chunks: list[list[str | None]] = []
    for block in table.blocks:
        if chunks and (len(chunks[-1]) + 1) * per_block <= LATEX_LINES_PER_FLOAT:
            chunks[-1].append(block)
        else:
            chunks.append([block])
    return chunks


def _latex_table(table: PaperTable, ci: bool, statistics: Sequence[str]) -> str:
    notes = _notes(table, statistics, ci)
    if table.lower:
        notes.append(LOWER_NOTE)
    if table.marked:
        notes.append(SIGNAL_NOTE)
    k, width = len(statistics), 1 + len(statistics) * len(table.columns)
    groups = " & ".join(
        rf"\multicolumn{{{n * k}}}{{c}}{{{latex_escape(group or '')}}}" for group, n in _groups(table.columns)
    )
    titles = " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{latex_escape(column.title)}}}" for column in table.columns)
    stats = " & ".join(_LATEX_HEADERS[s] for s in statistics)
    header = [
        rf"\begin{{tabular}}{{l{'r' * (width - 1)}}}",
        r"\hline",
        *([rf" & {groups} \\"] if any(column.group for column in table.columns) else []),
        *([rf" & {titles} \\"] if k > 1 else []),
        "method & "
        + (
            " & ".join([stats] * len(table.columns))
            if k > 1
            else " & ".join(latex_escape(column.title) for column in table.columns)
        )
        + r" \\",
        r"\hline",
    ]
    rows = _table_rows(table, statistics)
    chunks = _chunks(table, ci)
    floats = [r"% needs \usepackage{graphicx} (for \resizebox: a table wider than the text is scaled to its width)"]
    for number, chunk in enumerate(chunks, start=1):
        caption = (
            f"{table.title}. {'. '.join(notes)}."
            if number == 1
            else f"{table.title} (continued, {number} of {len(chunks)})."
        )
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{latex_escape(caption)}}}",
            # Set in a box first, so that only a table wider than the text is scaled down.
            r"\sbox0{%",
            *header,
        ]
        for block, method, row in rows:
            if block not in chunk:
                continue
            if block is not None and method == table.methods[0]:
                lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(block)}}}}} \\")
            lines.append(f"{latex_escape(method)} & {' & '.join(_latex_cell(c) for c in row)} \\\\")
            if ci and any(row):  # the base has no Δ or win rate, hence no interval line of them
                lines.append(f" & {' & '.join(_latex_ci(c) for c in row)} \\\\")
        lines += [
            r"\hline",
            r"\end{tabular}}%",
            r"\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\usebox{0}}\else\usebox{0}\fi",
            r"\end{table}",
        ]
        floats.append("\n".join(lines))
    return "\n".join(floats)


def plain_latex(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], note: str) -> str:
    """A table of text cells as it stands (no bold, no intervals' lines), captioned ``title. note.``."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(f'{title}. {note}.')}}}",
        rf"\begin{{tabular}}{{{'l' * len(headers)}}}",
        r"\hline",
        " & ".join(latex_escape(h) for h in headers) + r" \\",
        r"\hline",
        *(" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows),
        r"\hline",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines)


# -- Markdown --------------------------------------------------------------------------------------
_MARKDOWN_SPECIAL = set("\\`*_[]<>|#")
_MARKDOWN_HEADERS = {"mean": "mean", "delta": "Δ", "win": "win %"}


def markdown_escape(text: str) -> str:
    """``text`` as Markdown (GitHub's tables included) shows it literally."""
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in text)


def _markdown_cell(cell: Cell | None, ci: bool) -> str:
    if cell is None:
        return "–"
    text = f"**{cell.value}**" if cell.best else cell.value
    text += "†" if cell.marked else ""
    if ci:
        text += " " + ("[–]" if cell.ci is None else cell.ci)
    return text


def to_markdown(tables: Sequence[PaperTable], ci: bool = False, statistics: Sequence[str] = DEFAULT_STATISTICS) -> str:
    statistics = check_statistics(statistics)
    return "\n\n".join(_markdown_table(table, ci, statistics) for table in tables)


def _markdown_table(table: PaperTable, ci: bool, statistics: Sequence[str]) -> str:
    notes = _notes(table, statistics, ci)
    blocks = table.blocks != [None]
    headers = ["category"] * blocks + ["method"]
    headers += [
        " · ".join(
            [*filter(None, [column.group]), column.title] + ([_MARKDOWN_HEADERS[s]] if len(statistics) > 1 else [])
        )
        for column in table.columns
        for s in statistics
    ]
    lines = [
        f"**{markdown_escape(table.title)}** ({markdown_escape('; '.join(notes))})",
        "",
        f"| {' | '.join(markdown_escape(h) for h in headers)} |",
        "|" + ":--|" * (1 + blocks) + "--:|" * (len(headers) - 1 - blocks),
    ]
    for block, method, row in _table_rows(table, statistics):
        names = [markdown_escape(name) for name in (*([block] if blocks else []), method)]
        lines.append(f"| {' | '.join(names + [_markdown_cell(c, ci) for c in row])} |")
    lines += [""] * (table.marked or table.lower)
    lines += [
        markdown_escape(note) for note, shown in ((SIGNAL_NOTE, table.marked), (LOWER_NOTE, table.lower)) if shown
    ]
    return "\n".join(lines)


def plain_markdown(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], note: str) -> str:
    """A table of text cells as it stands, headed ``**title** (note)``."""
    lines = [
        f"**{markdown_escape(title)}** ({markdown_escape(note)})",
        "",
        f"| {' | '.join(markdown_escape(h) for h in headers)} |",
        "|" + ":--|" * len(headers),
        *(f"| {' | '.join(markdown_escape(c) for c in row)} |" for row in rows),
    ]
    return "\n".join(lines)
