"""`harness figure`: the dashboard's charts of a results directory, or of several side by side (each
experiment's methods against its own base, as `harness leaderboard`), written as files for a paper.

For each metric: the Δ-with-CI chart of every method against the base (a panel per suite) and,
for each suite whose prompts have categories, the same chart per category (a panel per method);
for each metric and suite, the win-rate heatmap; for each suite, an image grid (prompts taken in
turn from each of its categories × every method, the same image index, hence the same seed, for
all).  Every chart is built by the function the dashboard calls (``dashboard.charts``) and written
as PNG / SVG / PDF with its Vega-Lite spec beside it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import pandas as pd

from dashboard import charts
from dashboard.data import delta_frame, direction_title, image_grid, load_experiments, spread_prompts, statistics
from dashboard.server import check_results_dir
from harness.errors import HarnessError
from harness.results.experiments import SEPARATOR, Experiment, qualified
from harness.results.stats import win_rate_matrix

GRID_PX = 128


@dataclass(frozen=True)
class FigureOptions:
    figures: Path
    formats: Sequence[str] = ("png", "svg")
    base: str = "base"
    grid_prompts: int = 4
    grid_image: int = 0


def _slug(*parts: str) -> str:
    """A file name from labels: anything but letters, digits, '.', '+' and '-' becomes '_'."""
    return "-".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", part).strip("_") for part in parts)


def has_categories(board: pd.DataFrame, suite: str) -> bool:
    """Whether a suite's prompts fall in more than one category (else a per-category chart says nothing new)."""
    return board.loc[board["suite"] == suite, "category"].nunique(dropna=False) > 1


def overall_delta_chart(board: pd.DataFrame, label: str, methods: Sequence[str], base: str) -> alt.FacetChart:
    """Δ vs ``base`` of each method on one metric, a panel per suite."""
    frame = delta_frame(board, label, y="method", facet="suite")
    return charts.delta_chart(
        frame,
        y_title="method",
        facet_title="suite",
        order=methods,
        x_title=direction_title(board, label, base),
        title=f"{label}: Δ vs {base}",
    )


def category_delta_chart(by_category: pd.DataFrame, label: str, suite: str, base: str) -> alt.FacetChart:
    """Δ vs ``base`` per category of one suite and metric, a panel per method."""
    rows = by_category[by_category["suite"] == suite]
    frame = delta_frame(rows, label, y="category", facet="method")
    order = sorted(set(frame["y"]))
    return charts.delta_chart(
        frame,
        y_title="category (prompts)",
        facet_title="method",
        order=order,
        x_title=direction_title(rows, label, base),
        title=f"{suite} · {label}: Δ vs {base} per category",
    )


def write_figures(experiments: Sequence[Experiment], options: FigureOptions) -> list[Path]:
    """Write every figure of the results directories ``experiments`` (one, or several side by side) under
    ``options.figures``; returns the files written."""
    charts.check_formats(options.formats)
    for experiment in experiments:
        check_results_dir(experiment.results.root)

    results = load_experiments(experiments)
    scored = set(results.scores["method"])
    for experiment in experiments:
        base = qualified(experiment.name, options.base) if results.names else options.base
        own = sorted(m for m in scored if not results.names or m.startswith(qualified(experiment.name, "")))
        if not own:
            raise HarnessError(f"no scores in {experiment.results.root} yet: nothing to draw")
        if base not in scored:
            raise HarnessError(
                f"no scores of the base {options.base!r} in {experiment.results.root}; pass --base "
                f"with one of {', '.join(m.rpartition(SEPARATOR)[2] for m in own)}"
            )
    board, by_category = statistics(results, options.base), statistics(results, options.base, by=["category"])
    methods = [m for m in results.methods if m.rpartition(SEPARATOR)[2] != options.base]
    # Every chart is built before the first file is written: a mistake leaves nothing behind.
    figures: list[tuple[alt.TopLevelMixin, tuple[str, ...]]] = []
    metrics = board.drop_duplicates("metric_label")[["metric_label", "metric", "metric_version"]]
    for label, metric, version in metrics.itertuples(index=False):
        figures.append((overall_delta_chart(board, label, methods, options.base), ("delta", metric, version)))
        for suite in sorted(board.loc[board["metric_label"] == label, "suite"].unique()):
            if has_categories(by_category, suite):
                figures.append(
                    (
                        category_delta_chart(by_category, label, suite, options.base),
                        ("delta-by-category", suite, metric, version),
                    )
                )
            matrix = win_rate_matrix(results.scores, metric, suite, metric_version=version)
            order = [m for m in results.methods if m in matrix.index]
            figures.append(
                (
                    charts.win_rate_chart(matrix, order, title=f"{suite} · {label}: win rate"),
                    ("winrate", suite, metric, version),
                )
            )
    for suite in sorted(results.images["suite"].unique()):
        prompts = results.images[results.images["suite"] == suite]
        grid = image_grid(results, suite, spread_prompts(prompts, options.grid_prompts), options.grid_image, GRID_PX)
        if grid.empty:
            raise HarnessError(
                f"no image {options.grid_image} of any prompt of {suite}; pass a --grid-image "
                "below the images per prompt"
            )
        title = f"{suite}: image {options.grid_image} of each prompt, the same seed for every method"
        figures.append((charts.image_grid_chart(grid, results.methods, GRID_PX, title=title), ("grid", suite)))

    options.figures.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for chart, name in figures:
        written.extend(charts.save_chart(chart, options.figures / _slug(*name), options.formats))
    return written
