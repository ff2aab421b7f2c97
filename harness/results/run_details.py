"""What each run of a results directory did and cost: `harness runs` prints it, the dashboard's
Run details page shows it, both from ``run_details``.

Per run: its own start and end (its first job's start, its last job's end), its wall time (the
sum of its jobs'), CPU-hours or GPU-hours (summed over a training's processes), the processes its training ran as, UNet evaluations per training sample, the images each reward model scored
during training per training sample (an online method's rewards; 0 offline), peak memory
(``harness.results.compute`` says how each is measured), and what its training read of the data (pairs
read, ties skipped, unreadable).  A figure a run does not have (the base trains nothing; a CPU uses
no GPU-hours) shows as ``MISSING``.
"""

from __future__ import annotations

import json

import pandas as pd

from harness.results.text_table import text_table

MISSING = "–"
# Column of ``Store.runs_frame`` -> (header, format of a value)
FIGURES = {
    "started_at": ("started (UTC)", "{}"),
    "ended_at": ("ended (UTC)", "{}"),
    "wall_s": ("wall s", "{:.1f}"),
    "cpu_hours": ("CPU-hours", "{:.4g}"),
    "gpu_hours": ("GPU-hours", "{:.4g}"),
    "unet_evals_per_sample": ("UNet evals / sample", "{:.4g}"),
    "peak_memory_mb": ("peak memory MiB", "{:.0f}"),
    "train_processes": ("training processes", "{:.0f}"),
}
REWARD_CALLS = "reward_calls_per_sample"


def run_details(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (``Store.runs_frame``'s): run_id, method, status, the ``FIGURES`` columns, numbers
    numeric (NaN where missing) and times as stored (ISO-8601 UTC; None while a run has not ended),
    reward_calls_per_sample ({scorer: calls per training sample}, {} offline; None where nothing was trained)
    and training_data: what its training read (``harness.data.check``'s summary; None where it trained nothing)."""
    details = runs[["run_id", "method", "status", *FIGURES]].reset_index(drop=True)
    # NULL reads back as None, or as NaN where no run of the frame has a value
    details[REWARD_CALLS] = [None if pd.isna(calls) else json.loads(calls) for calls in runs[REWARD_CALLS]]
    details["training_data"] = [json.loads(compute or "{}").get("training_data") for compute in runs["compute"]]
    return details


def shown_run_details(details: pd.DataFrame) -> pd.DataFrame:
    """``run_details`` as the text shown (columns: run, method, status and the ``FIGURES`` headers), ``MISSING``
    for what a run does not have.  Text, not numbers with a missing-value format: Streamlit's grid draws a
    missing number as "None" whatever the format says."""
    shown = pd.DataFrame(
        {"run": details["run_id"].astype(str), "method": details["method"], "status": details["status"]}
    )
    for column, (title, _) in FIGURES.items():
        shown[title] = [_cell(column, value) for value in details[column]]
    shown["reward calls / sample"] = [_reward_cell(calls) for calls in details[REWARD_CALLS]]
    shown["training data"] = [
        MISSING if value is None or pd.isna(value) else value for value in details["training_data"]
    ]
    return shown


def format_run_details(details: pd.DataFrame) -> str:
    """``run_details`` as a text table, ``MISSING`` for what a run does not have."""
    shown = shown_run_details(details)
    return text_table([list(shown.columns), *shown.itertuples(index=False)])


def _reward_cell(calls: dict[str, float] | None) -> str:
    """``{"pickscore": 24.0}`` -> "pickscore 24"; {} (an offline method) -> "0"."""
    if calls is None:
        return MISSING
    return ", ".join(f"{name} {n:.4g}" for name, n in calls.items()) or "0"


def _cell(column: str, value: object) -> str:
    if value is None or pd.isna(value):
        return MISSING
    if column.endswith("_at"):  # every time is UTC (the header says so)
        return str(value).removesuffix("+00:00")
    return FIGURES[column][1].format(value)
