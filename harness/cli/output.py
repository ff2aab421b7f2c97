"""A leaderboard as the commands print it: a table for people, CSV or JSON for programs, LaTeX or Markdown for
a paper."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

from harness.results.hacking import HACKING_COLUMNS, HACKING_NOTE
from harness.results.run_details import MISSING
from harness.results.stats import LOWER_MARK, LOWER_NOTE, SIGNAL_MARK, SIGNAL_NOTE
from harness.results.tables import DEFAULT_STATISTICS, paper_tables, plain_latex, plain_markdown, to_latex, to_markdown
from harness.results.text_table import text_table

LEADERBOARD_COLUMNS = [
    "method",
    "suite",
    "split",
    "metric",
    "higher_is_better",
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "delta_vs_base",
    "delta_ci_low",
    "delta_ci_high",
    "win_rate_vs_base",
    "trained_on_signal",
]


def print_leaderboard(
    rows: list[dict],
    fmt: str,
    *,
    base: str = "base",
    ci: bool = False,
    by: str | None = None,
    statistics: list[str] | None = None,
) -> None:
    """Print ``rows`` (harness.results.stats.leaderboard's) in ``fmt``: table, csv, json, latex or markdown.  ``base``,
    ``by``, ``statistics``: the paper tables' (harness.results.tables); ``ci``: intervals beside the values."""
    if fmt in ("latex", "markdown"):
        print(
            (to_latex if fmt == "latex" else to_markdown)(
                paper_tables(rows, base=base, by=by), ci=ci, statistics=statistics or DEFAULT_STATISTICS
            )
        )
    elif fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        columns = list(rows[0]) if rows else LEADERBOARD_COLUMNS
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        print(format_table(rows, ci=ci))


def format_table(rows: list[dict], ci: bool = False) -> str:
    """A compact human table: mean [95% CI], delta vs base [CI], win rate (with ``ci``, its Wilson 95% interval).

    A mean is marked when its method was trained on that metric, and a lower-is-better metric's name,
    each with a footnote saying what it means.
    """

    def num(value: Any, digits: int = 4) -> str:
        return MISSING if value is None else f"{value:.{digits}g}"

    def interval(low: Any, high: Any, digits: int) -> str:
        return "[no CI: 1 prompt]" if low is None or high is None else f"[{num(low, digits)}, {num(high, digits)}]"

    # Rows split by category say so, with each part's prompt count: few prompts, wide CIs.
    by_category = any("category" in r for r in rows)
    parts = ["category", "prompts"] if by_category else []
    header = ["method", "suite", *parts, "metric", "n", "mean [95% CI]", "Δ vs base [95% CI]", "win rate"]
    lines = [header]
    for r in rows:
        delta = (
            MISSING
            if r.get("delta_vs_base") is None
            else f"{num(r['delta_vs_base'], 3)} {interval(r['delta_ci_low'], r['delta_ci_high'], 3)}"
        )
        win = MISSING if r.get("win_rate_vs_base") is None else f"{r['win_rate_vs_base']:.1%}"
        if ci and r.get("win_ci_low") is not None:
            win += f" [{r['win_ci_low']:.1%}, {r['win_ci_high']:.1%}]"
        mark = SIGNAL_MARK if r.get("trained_on_signal") else ""
        metric = r["metric"] if r.get("higher_is_better", True) else f"{r['metric']} {LOWER_MARK}"
        lines.append(
            [
                r["method"],
                r["suite"],
                *([str(r["category"]), str(r["n_prompts"])] if by_category else []),
                metric,
                str(r["n"]),
                f"{num(r['mean'])}{mark} {interval(r['ci_low'], r['ci_high'], 4)}",
                delta,
                win,
            ]
        )
    table = text_table(lines)
    notes = [
        note
        for note, shown in (
            (SIGNAL_NOTE, any(r.get("trained_on_signal") for r in rows)),
            (LOWER_NOTE, not all(r.get("higher_is_better", True) for r in rows)),
        )
        if shown
    ]
    return "\n".join([table, *notes])


def print_hacking(rows: list[dict], fmt: str) -> None:
    """Print the reward-hacking report's rows (``harness.results.hacking.hacking_report``'s) in ``fmt``: table, csv,
    json, latex or markdown."""
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=HACKING_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    elif fmt == "table":
        print(format_hacking(rows))
    else:
        headers = ["method", "suite", "role", "metric", "Δ vs base [95% CI]", "verdict", "flagged"]
        cells = [[*_hacking_cells(r)[:6], "yes" if r["flagged"] else "no"] for r in rows]
        writer = plain_latex if fmt == "latex" else plain_markdown
        print(writer("Reward hacking", headers, cells, HACKING_NOTE))


def _hacking_cells(r: dict) -> list[str]:
    delta = (
        MISSING
        if r["delta"] is None
        else f"{r['delta']:+.3g} "
        + ("[no CI]" if r["delta_ci_low"] is None else f"[{r['delta_ci_low']:+.3g}, {r['delta_ci_high']:+.3g}]")
    )
    metric = r["metric"] if r["higher_is_better"] else f"{r['metric']} {LOWER_MARK}"
    if r["role"] == "diversity":
        metric += f" ({r['metric_version']})"
    return [r["method"], r["suite"], r["role"], metric, delta, r["verdict"] or MISSING]


def format_hacking(rows: list[dict]) -> str:
    """The reward-hacking report for people: a line per metric, then each (method, suite)'s finding."""
    if not rows:
        return "reward hacking: nothing to compare (no method beside the base)"
    table = text_table(
        [["method", "suite", "role", "metric", "Δ vs base [95% CI]", "verdict"]] + [_hacking_cells(r) for r in rows]
    )
    findings = dict.fromkeys((r["method"], r["suite"], r["finding"]) for r in rows)
    lines = [f"{'!! ' if f.startswith('flagged') else '   '}{m} / {s}: {f}" for m, s, f in findings]
    return "\n".join([table, "", *lines, "", HACKING_NOTE])
