"""Metrics over training: `harness run --eval-every N` evaluates a method's UNet every N steps.

The training exports its UNet every N steps (``harness.train.trainer.snapshot_unet_dir``, as it exports the
final one); after the method's own evaluation, in its job (``harness.backends.jobs.evaluate_curve``), each of
these and the final UNet are evaluated by ``harness.evaluation.evaluate.evaluate`` (the one evaluation path), each
as a run of its own named ``METHOD@STEP``, with the run's protocol: the same prompts, seeds, sampler and
scorers as the final evaluation (``--eval-suites`` keeps some of its suites, each whole: cutting a
suite's prompts would change the seeds of its images, ``harness.evaluation.sampling``). So the last point, the final
UNet evaluated again, equals the method's leaderboard number; its images are the final evaluation's, so
their scores come from the score cache.

The scores of these runs are in the store like any run's; a curve point is the leaderboard's
statistics of one of them (mean with its 95 % bootstrap CI, Δ vs the base with its CI), computed by
``curve_points``.  The leaderboard, the figures and the dashboard's other pages leave these runs out
(``is_snapshot``); the dashboard's Curves page and TensorBoard (``eval/<suite>/<metric>`` in the
method's ``tensorboard`` folder) draw them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from harness.atomic import staging
from harness.results.stats import leaderboard

MARK = "@"  # METHOD@STEP; run names and method names never hold it
CURVE_EVENTS = "events.out.tfevents.eval-curve."  # + a key of its scalars (``write_tensorboard``)
_SNAPSHOT = re.compile(r"(?P<method>.+)@(?P<step>\d+)")


def snapshot_name(method: str, step: int) -> str:
    return f"{method}{MARK}{step}"


def is_snapshot(name: str) -> bool:
    return _SNAPSHOT.fullmatch(name.rpartition("/")[2]) is not None


def split_snapshots(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A frame with a method column as (the rows of ordinary runs, the rows of ``METHOD@STEP`` runs)."""
    snapshot = frame["method"].map(is_snapshot).astype(bool)
    return frame[~snapshot], frame[snapshot]


def curve_steps(max_steps: int, every: int) -> list[int]:
    """The steps evaluated: every ``every``-th one, and the last."""
    return sorted({*range(every, max_steps, every), max_steps})


def curve_points(scores: pd.DataFrame, base: str = "base") -> pd.DataFrame:
    """One row per (method, step, suite, metric version) of the ``METHOD@STEP`` runs in ``scores`` (with the
    base's, which Δ pairs with): the leaderboard's fields plus method and step."""
    base_rows = scores[scores["method"] == base]
    _, snapshots = split_snapshots(scores)
    rows = [row for row in leaderboard(pd.concat([base_rows, snapshots]), base=base) if row["method"] != base]
    points = pd.DataFrame(rows)
    if points.empty:
        return points
    parsed = points["method"].str.extract(f"^{_SNAPSHOT.pattern}$")
    return points.assign(method=parsed["method"], step=parsed["step"].astype(int)).sort_values(
        ["method", "suite", "metric", "step"], ignore_index=True
    )


def write_tensorboard(points: pd.DataFrame, method: str, log_dir: Path) -> None:
    """The curve of ``method`` as TensorBoard scalars: ``eval/<suite>/<metric>`` (the mean) and its CI bounds.

    One events file in ``log_dir`` (beside the training's), named by its scalars: a rerun with the same points
    finds it and writes nothing; other points replace it.  TensorBoard draws every events file of a folder, so a
    file per rerun would draw the curve again each time."""
    from torch.utils.tensorboard import SummaryWriter

    scalars = [
        (f"eval/{row.suite}/{row.metric}" + ("" if field == "mean" else f"/{field}"), int(row.step), float(value))
        for row in points[points["method"] == method].itertuples()
        for field in ("mean", "ci_low", "ci_high")
        if (value := getattr(row, field)) is not None and not pd.isna(value)
    ]
    log_dir = Path(log_dir)
    events = log_dir / (CURVE_EVENTS + hashlib.sha256(repr(scalars).encode()).hexdigest()[:16])
    if not events.exists():
        # Written whole beside the folder, then moved in: a killed writer leaves no partial curve in it.
        staged = log_dir.with_name(f".{log_dir.name}.curve.{os.getpid()}.tmp")
        shutil.rmtree(staged, ignore_errors=True)
        with staging(events, staged):
            with SummaryWriter(str(staged)) as writer:
                for tag, step, value in scalars:
                    writer.add_scalar(tag, value, step)
            log_dir.mkdir(parents=True, exist_ok=True)
            (written,) = staged.glob("events.out.tfevents.*")
            os.replace(written, events)
            staged.rmdir()
    for earlier in log_dir.glob(CURVE_EVENTS + "*"):
        if earlier != events:
            earlier.unlink()
