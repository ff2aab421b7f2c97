"""`harness reproduce`: the published checkpoints through `harness run --pretrained`, beside the paper's numbers.

For every model of the paper's tables that was run (the base, each method's published UNet), every
suite and metric: the paper's mean, ours with its 95% bootstrap CI over prompts, the difference
ours - paper, and that difference in units of our CI, ``z``:

    z = (ours - paper) / (distance from our mean to our CI's bound on the paper's side)

so |z| <= 1 exactly when the paper's value lies inside our CI (bootstrap CIs need not be symmetric,
hence the bound on the paper's side).  The paper scored the same prompts (with its own seeds), while
our CI also counts the spread between prompts, so it is a generous yardstick: |z| > 1 is more likely
other weights or another protocol than other seeds.  The paper's win rates over the base are set
beside ours the same way, in units of our Wilson interval.

A metric the run did not compute shows as missing.  A metric scored with other weights than the
paper's (another version, or a ``+custom-`` one: local, non-official weights) is flagged: that row
compares, but does not reproduce.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from harness.api.scorer import weights_of
from harness.errors import HarnessError
from harness.evaluation.evaluate import BASE
from harness.results.published import PUBLISHED, Metric, PaperRow, PublishedTables
from harness.results.stats import ci_units
from harness.run import run

MISSING = "–"
FLAG_MARK = "!"
Z_NOTE = (
    "z = (ours - paper) / (our mean's distance to our 95% CI bound on the paper's side): "
    "|z| <= 1 when the paper's value lies inside our CI"
)


@dataclass(frozen=True)
class Comparison:
    """One published number beside ours (``ours`` None: the run did not compute it)."""

    kind: str  # "mean" or "win rate"
    model: str  # the paper's row
    method: str  # ours
    suite: str
    metric: str
    paper: float
    source: str
    ours: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_prompts: int | None = None
    version: str | None = None  # the version of our scorer's weights
    diff: float | None = None  # ours - paper
    z: float | None = None
    flag: str = ""  # why this row is not a reproduction


@dataclass(frozen=True)
class Report:
    tables: PublishedTables
    means: list[Comparison]
    win_rates: list[Comparison]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "paper": self.tables.paper,
            "preset": self.tables.preset,
            "means": [dataclasses.asdict(c) for c in self.means],
            "win_rates": [dataclasses.asdict(c) for c in self.win_rates],
            "notes": self.notes,
        }


def published_tables(preset: str) -> PublishedTables:
    try:
        return PUBLISHED[preset]
    except KeyError:
        raise HarnessError(f"no published tables for preset {preset!r}; available: {', '.join(PUBLISHED)}") from None


def reproduce(options) -> Report:
    """Run ``options`` (a ``harness.plan.planner.RunOptions``) with ``pretrained=True``, then compare with the paper.

    Empty ``methods``: every method with a published checkpoint in the paper's tables; no
    ``scorers``: the paper's metrics.  The run resumes like ``harness run``; its progress goes to
    stderr, so stdout carries only the report.
    """
    tables = published_tables(options.preset)
    options = dataclasses.replace(
        options,
        pretrained=True,
        methods=options.methods or [row.method for row in tables.rows if row.method not in (None, BASE)],
        scorers=options.scorers or [metric.scorer for metric in tables.metrics],
    )
    with _stdout_to_stderr():
        rows = run(options)
    return compare(rows, tables, options.methods)


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 onto 2, so worker processes (forked or spawned) print there too."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def compare(rows: list[dict], tables: PublishedTables, methods: Iterable[str]) -> Report:
    """The paper's numbers beside the leaderboard ``rows`` of a run of the base and ``methods``."""
    methods = list(methods)
    found: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        found[(row["method"], row["suite"], row["metric"])].append(row)
    compared = [row for row in tables.rows if row.method is not None and row.method in (BASE, *methods)]

    means: list[Comparison] = []
    for row in compared:
        for suite in tables.suites:
            for metric in tables.metrics:
                means += _beside(
                    found[(row.method, suite, metric.scorer)],
                    "mean",
                    row,
                    suite,
                    metric,
                    paper=row.means[suite][metric.scorer],
                    source=tables.mean_source(row, suite, metric),
                    fields=("mean", "ci_low", "ci_high"),
                )
    win_rates: list[Comparison] = []
    for (method, suite, scorer), paper in tables.win_rates.items():
        if method in methods:
            row, metric = tables.row_of(method), tables.metric(scorer)
            win_rates += _beside(
                found[(method, suite, scorer)],
                "win rate",
                row,
                suite,
                metric,
                paper=paper,
                source=tables.win_rate_source(row, suite, metric),
                fields=("win_rate_vs_base", "win_ci_low", "win_ci_high"),
            )
    notes = [Z_NOTE] + [f"{row.method} = {row.label!r}: {row.mapping}" for row in compared]
    notes += [
        f"{method}: no row in the paper's tables, not compared (see `harness leaderboard`)"
        for method in methods
        if tables.row_of(method) is None
    ]
    if any(c.flag for c in means + win_rates):
        notes.append(f"{FLAG_MARK} the metric's weights are not the paper's: that row is not a reproduction")
    return Report(tables, means, win_rates, notes)


def _beside(
    found: list[dict],
    kind: str,
    row: PaperRow,
    suite: str,
    metric: Metric,
    *,
    paper: float,
    source: str,
    fields: tuple[str, str, str],
) -> list[Comparison]:
    """One comparison per version of the metric the run stored (usually one), or one without ours."""
    missing = Comparison(kind, row.label, row.method, suite, metric.scorer, paper, source)
    value, low, high = fields
    return [
        dataclasses.replace(
            missing,
            ours=r[value],
            ci_low=r[low],
            ci_high=r[high],
            n_prompts=r["n_prompts"],
            version=r["metric_version"],
            diff=r[value] - paper,
            z=ci_units(r[value], r[low], r[high], paper),
            flag=version_flag(metric, r["metric_version"]),
        )
        for r in found
        if r[value] is not None
    ] or [missing]


def version_flag(metric: Metric, version: str) -> str:
    if weights_of(version) == metric.version:
        return ""
    why = "non-official weights" if "+custom-" in version else "other weights"
    return f"{metric.scorer} {version}, the paper's is {metric.version} ({why})"


# --- The report as text -------------------------------------------------------------------------


def format_report(report: Report) -> str:
    tables = report.tables
    parts = [
        f"{tables.paper}: published numbers beside ours (preset {tables.preset})",
        "",
        "Mean scores",
        _table(report.means, tables, percent=False),
    ]
    if report.win_rates:
        parts += [
            "",
            f"Win rates over {tables.row_of(BASE).label} (per prompt the median of its images, "
            "a win when strictly higher)",
            _table(report.win_rates, tables, percent=True),
        ]
    parts += ["", "Notes"] + [f"  {note}" for note in report.notes]
    return "\n".join(parts)


def _table(comparisons: list[Comparison], tables: PublishedTables, *, percent: bool) -> str:
    header = ["suite", "model", "metric", "paper", "ours [95% CI]", "prompts", "ours - paper", "z", "note"]
    lines = [header]
    for c in comparisons:
        metric = tables.metric(c.metric)
        # Ours one digit finer than the paper printed; win rates in percent with one decimal, as the paper.
        digits = 1 if percent else metric.decimals + 1

        def number(value: float | None, sign: str = "") -> str:
            return MISSING if value is None else f"{value:{sign}.{digits}{'%' if percent else 'f'}}"

        ours = MISSING if c.ours is None else f"{number(c.ours)} [{number(c.ci_low)}, {number(c.ci_high)}]"
        paper = f"{c.paper:.1%}" if percent else f"{c.paper:.{metric.decimals}f}"
        lines.append(
            [
                c.suite,
                f"{c.model} ({c.method})",
                metric.label,
                paper,
                ours,
                MISSING if c.n_prompts is None else str(c.n_prompts),
                number(c.diff, "+"),
                MISSING if c.z is None else f"{c.z:+.2f}",
                f"{FLAG_MARK} {c.flag}" if c.flag else "",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
