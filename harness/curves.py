"""Metrics over training: `harness run --eval-every N` evaluates a method's UNet every N steps.

The training exports its UNet every N steps (``harness.trainer.snapshot_unet_dir``, as it exports
the final one); after the method's own evaluation, each of these and the final UNet are evaluated
by ``harness.evaluate.evaluate`` (the one evaluation path), each as a run of its own named
``METHOD@STEP``, with the run's protocol: the same prompts, seeds, sampler and scorers as the
final evaluation (``--eval-suites`` keeps some of its suites, each whole: cutting a suite's
prompts would change the seeds of its images, ``harness.sampling``).  So the last point, the final
UNet evaluated again, equals the method's leaderboard number; its images are the final
evaluation's, so their scores come from the score cache.

The scores of these runs are in the store like any run's; a curve point is the leaderboard's
statistics of one of them (mean with its 95 % bootstrap CI, Δ vs the base with its CI), computed by
``curve_points``.  The leaderboard, the figures and the dashboard's other pages leave these runs out
(``is_snapshot``); the dashboard's Curves page and TensorBoard (``eval/<suite>/<metric>`` in the
method's ``tensorboard`` folder) draw them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from harness.errors import HarnessError
from harness.progress import say
from harness.results import ResultsDir

if TYPE_CHECKING:
    from harness.api.preset import Preset
    from harness.evaluate import Checkpoint
    from harness.jobs import ModelJob
    from harness.plan import Plan, RunOptions

MARK = "@"  # METHOD@STEP; run names and method names never hold it
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


def validate(options: RunOptions, preset: Preset) -> None:
    """--eval-every and --eval-suites, checked with the run's other options."""
    if options.eval_every is None:
        if options.eval_suites:
            raise HarnessError("--eval-suites names the suites of --eval-every's evaluations: give --eval-every N too")
        return
    if options.pretrained:
        raise HarnessError("--eval-every evaluates a training's intermediate UNets; --pretrained trains nothing")
    suites = options.suites or preset.suites
    unknown = sorted(set(options.eval_suites or ()) - set(suites))
    if unknown:
        raise HarnessError(f"--eval-suites {', '.join(unknown)}: not a suite of this run ({', '.join(suites)})")


def say_cost(plan: Plan) -> None:
    """Print, before the run starts, how many more images --eval-every makes and scores."""
    curve = plan.curve_protocol
    images = sum(len(curve.load_suite(s)) * curve.sampling(s)["images_per_prompt"] for s in curve.suites)
    points = {m.method: len(curve_steps(m.config.max_steps, plan.options.eval_every))
              for m in plan.methods if m.train and m.evaluate}
    total = sum(points.values())
    say(f"   --eval-every {plan.options.eval_every}: {total} more evaluations "
        f"({', '.join(f'{m} {n}' for m, n in points.items())}) of {images} images each on "
        f"{', '.join(curve.suites)}: {total * images} images to generate and score (each method's last point "
        "is its final UNet again, whose scores come from the cache)")


def evaluate_curve(job: ModelJob, checkpoint: Checkpoint, evaluate: Callable[..., None]) -> None:
    """After a trained model's evaluation (in its job): its UNet of every step ``curve_steps`` names, each
    evaluated as run METHOD@STEP by ``evaluate`` (``harness.evaluate.evaluate``, or the Ray backend's split of
    it) with the plan's ``curve_protocol``; then its curve to TensorBoard.  A snapshot the training did not
    export (it ran without --eval-every) is skipped, so a rerun evaluates what there is."""
    from harness.evaluate import BASE, get_or_create_run, recorded_model
    from harness.store import Store
    from harness.trainer import snapshot_unet_dir

    model, plan = job.model, job.plan
    results, curve = ResultsDir(plan.options.out), plan.curve_protocol
    max_steps = model.config.max_steps
    for step in curve_steps(max_steps, plan.options.eval_every):
        unet = model.unet if step == max_steps else str(snapshot_unet_dir(results.model(model.method), step))
        if not Path(unet).is_dir():
            continue
        name = snapshot_name(model.method, step)
        with Store(results.db) as store:
            base = recorded_model(plan.base_model, results)
            run_id = get_or_create_run(store, name, plan.preset, base, plan.options.seed,
                                       snapshot_of=model.method, step=step, suites=list(curve.suites))
        evaluate(name, run_id, dataclasses.replace(checkpoint, unet=unet, unet_subfolder=None), curve, results,
                 job.stage)
    with Store(results.db, readonly=True) as store:
        scores = store.scores_frame()
    own = scores["method"].eq(BASE) | scores["method"].str.startswith(model.method + MARK)
    write_tensorboard(curve_points(scores[own]), model.method, results.model(model.method) / "tensorboard")


def curve_points(scores: pd.DataFrame, base: str = "base") -> pd.DataFrame:
    """One row per (method, step, suite, metric version) of the ``METHOD@STEP`` runs in ``scores`` (with the
    base's, which Δ pairs with): the leaderboard's fields plus method and step."""
    from harness.stats import leaderboard

    base_rows = scores[scores["method"] == base]
    _, snapshots = split_snapshots(scores)
    rows = [row for row in leaderboard(pd.concat([base_rows, snapshots]), base=base) if row["method"] != base]
    points = pd.DataFrame(rows)
    if points.empty:
        return points
    parsed = points["method"].str.extract(f"^{_SNAPSHOT.pattern}$")
    return points.assign(method=parsed["method"], step=parsed["step"].astype(int)).sort_values(
        ["method", "suite", "metric", "step"], ignore_index=True)


def write_tensorboard(points: pd.DataFrame, method: str, log_dir: Path) -> None:
    """The curve of ``method`` as TensorBoard scalars: ``eval/<suite>/<metric>`` (the mean) and its CI bounds."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for row in points[points["method"] == method].itertuples():
            for field in ("mean", "ci_low", "ci_high"):
                value = getattr(row, field)
                if value is not None and not pd.isna(value):
                    tag = f"eval/{row.suite}/{row.metric}" + ("" if field == "mean" else f"/{field}")
                    writer.add_scalar(tag, value, row.step)
