"""What the dashboard shows, as plain pandas: loading, tables, safe image paths.

Nothing here imports Streamlit, so every table the pages draw can be built (and tested)
without a browser.  The pages in ``views.py`` only lay these out.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from harness.errors import HarnessError
from harness.results import ResultsDir
from harness.stats import LOWER_MARK
from harness.store import Store

BASE = "base"
OUT_ENV = "HARNESS_OUT"


def results_dir_from(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The results directory: ``--out DIR`` (after ``--`` on the streamlit command line) or $HARNESS_OUT."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out")
    # Unknown arguments are ignored: under AppTest, sys.argv is pytest's.
    args, _ = parser.parse_known_args(list(argv))
    out = args.out or environ.get(OUT_ENV)
    if not out:
        raise HarnessError(f"no results directory: pass `-- --out DIR` or set {OUT_ENV}")
    return Path(out).resolve()


def fingerprint(results_dir: Path) -> tuple[int, ...]:
    """Changes whenever a writer commits (the database or its WAL grows or is touched): a cache key."""
    db = ResultsDir(results_dir).db
    stats = [p.stat() for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    return tuple(v for s in stats for v in (s.st_mtime_ns, s.st_size))


@dataclass(frozen=True)
class Results:
    """Everything the pages read, loaded once per database change through a read-only connection."""

    results_dir: Path
    fingerprint: tuple[int, ...]  # of the database when loading began: the key of derived caches
    scores: pd.DataFrame
    images: pd.DataFrame
    training: pd.DataFrame
    runs: pd.DataFrame
    checkpoints: pd.DataFrame
    overlaps: pd.DataFrame
    training_signals: pd.DataFrame

    @property
    def methods(self) -> list[str]:
        """Methods in display order: the base first, then alphabetical."""
        return sorted(set(self.runs["method"]), key=lambda m: (m != BASE, m))


def load_results(results_dir: Path) -> Results:
    stamp = fingerprint(results_dir)
    with Store(results_dir, readonly=True) as store:
        return Results(
            results_dir=Path(results_dir),
            fingerprint=stamp,
            scores=store.scores_frame(),
            images=store.images_frame(),
            training=store.training_frame(),
            runs=store.runs_frame(),
            checkpoints=store.checkpoints_frame(),
            overlaps=store.overlaps_frame(),
            training_signals=store.training_signals_frame(),
        )


def metric_label(metric: str, version: str, higher_is_better: bool = True) -> str:
    """Column header of a metric: versions are separate metrics and always shown; a lower-is-better
    metric is marked so."""
    return f"{metric} ({version})" + ("" if higher_is_better else f" {LOWER_MARK}")


def metric_labels(frame: pd.DataFrame) -> list[str]:
    """``metric_label`` of each row of a leaderboard or scores frame."""
    return [metric_label(*row) for row in frame[["metric", "metric_version", "higher_is_better"]].itertuples(index=False)]


def leaderboard_frame(rows: list[dict]) -> pd.DataFrame:
    """``harness.stats.leaderboard`` rows as a frame with a ``metric_label`` column."""
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["metric_label"] = metric_labels(board)
    return board


def filter_split(board: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split ('seen' / 'unseen'), or all of them for 'all'."""
    return board if split == "all" or board.empty else board[board["split"] == split]


def overview_table(board: pd.DataFrame, methods: Sequence[str], values: str = "mean") -> pd.DataFrame:
    """One row per method, one column per (suite, metric): the mean score (or another field).

    Methods come in ``methods`` order so the table does not reshuffle between reloads.
    """
    board = board.assign(column=board["suite"] + " · " + board["metric_label"])
    table = board.pivot_table(index="method", columns="column", values=values, aggfunc="first", sort=True)
    table = table.reindex([m for m in methods if m in table.index])
    table.columns.name = None
    return table.reset_index()


def signal_cells(board: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Boolean frame shaped like ``overview_table``: True where the row's method was trained on
    the column's metric."""
    flags = overview_table(board, methods, values="trained_on_signal")
    mask = flags.drop(columns="method").eq(True)  # a method without that column's scores: False
    mask.insert(0, "method", False)
    return mask


def column_directions(board: pd.DataFrame) -> dict[str, bool]:
    """``{overview column: higher_is_better}``, as the statistics found it in the scores."""
    return {
        f"{suite} · {label}": bool(higher)
        for suite, label, higher in board[["suite", "metric_label", "higher_is_better"]]
        .drop_duplicates().itertuples(index=False)
    }


def best_cells(table: pd.DataFrame, directions: Mapping[str, bool]) -> pd.DataFrame:
    """Boolean frame: True where a cell holds its column's best value (ties all marked)."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for column, higher in directions.items():
        if column in table.columns and table[column].notna().any():
            best = table[column].max() if higher else table[column].min()
            mask[column] = table[column] == best
    return mask


def _interval(low: float | None, high: float | None, fmt: str) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{low:{fmt}}, {high:{fmt}}]"


def detail_table(board: pd.DataFrame, label: str, methods: Sequence[str]) -> pd.DataFrame:
    """One metric: a row per (method, suite) with mean, CI, delta and win rate vs the base.

    Numbers stay numeric (so columns sort); intervals are text next to them.
    """
    rows = board[board["metric_label"] == label].copy()
    order = {m: i for i, m in enumerate(methods)}
    rows = rows.sort_values(["suite", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    return pd.DataFrame({
        "method": rows["method"],
        "suite": rows["suite"],
        "split": rows["split"],
        "n": rows["n"],
        "mean": rows["mean"],
        "trained_on_signal": rows["trained_on_signal"],
        "95% CI": [_interval(lo, hi, ".4g") for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
        "Δ vs base": pd.to_numeric(rows["delta_vs_base"]),
        "Δ 95% CI": [_interval(lo, hi, ".3g") for lo, hi in zip(rows["delta_ci_low"], rows["delta_ci_high"])],
        "win rate vs base": pd.to_numeric(rows["win_rate_vs_base"]),
        "win 95% CI": [_interval(lo, hi, ".0%") for lo, hi in zip(rows["win_ci_low"], rows["win_ci_high"])],
    }).reset_index(drop=True)


def best_per_suite(detail: pd.DataFrame, higher: bool) -> pd.Series:
    """True on the rows whose mean is the best of their suite."""
    best = detail.groupby("suite")["mean"].transform("max" if higher else "min")
    return detail["mean"] == best


def image_file(results_dir: Path, path: str) -> Path | None:
    """The file of a stored image path, or None when it is missing or lies outside the results dir.

    Paths come from the database, never from the browser, and are relative to the results directory.
    """
    root = Path(results_dir).resolve()
    resolved = ResultsDir(root).file(path).resolve()
    return resolved if resolved.is_relative_to(root) and resolved.is_file() else None


def thumbnail(path: Path, size: int) -> bytes:
    """A JPEG no larger than ``size`` pixels on its longer side: what the browser loads per image."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def prompt_table(images: pd.DataFrame, suite: str, categories: Sequence[str]) -> pd.DataFrame:
    """The prompts of a suite (optionally of some categories), one row each, in prompt_id order."""
    rows = images[images["suite"] == suite]
    if categories:
        rows = rows[rows["category"].isin(categories)]
    return rows.drop_duplicates("prompt_id")[["prompt_id", "prompt", "category"]].sort_values("prompt_id")


def prompt_grid(results: Results, suite: str, prompt_id: str) -> pd.DataFrame:
    """Images of one prompt across methods: a row per (image_index, method) with path, seed and scores.

    Score columns are the metric labels, so each image's caption can list them.
    """
    images = results.images[(results.images["suite"] == suite) & (results.images["prompt_id"] == prompt_id)]
    scores = results.scores[(results.scores["suite"] == suite) & (results.scores["prompt_id"] == prompt_id)]
    wide = pd.DataFrame(index=pd.MultiIndex.from_arrays([[], []], names=["run_id", "image_index"]))
    if not scores.empty:
        scores = scores.assign(label=metric_labels(scores))
        wide = scores.pivot_table(index=["run_id", "image_index"], columns="label", values="value", aggfunc="first")
        wide.columns.name = None
    grid = images[["run_id", "method", "image_index", "seed", "path"]].merge(
        wide.reset_index(), on=["run_id", "image_index"], how="left")
    return grid.sort_values(["image_index", "method"]).reset_index(drop=True)


def overlap_warnings(results: Results) -> list[str]:
    """One sentence per trained method and unseen suite whose prompts appear in its training captions."""
    overlaps = results.overlaps
    rows = overlaps[(overlaps["n_overlap"] > 0) & (overlaps["split"] == "unseen") & (overlaps["method"] != BASE)]
    return [
        f"{r.method}: {r.n_overlap} prompt(s) of the unseen suite '{r.suite}' appear in its training "
        "captions, so that suite is not entirely unseen for it."
        for r in rows.itertuples()
    ]
