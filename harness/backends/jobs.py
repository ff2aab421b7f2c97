"""The two kinds of job of `harness run`: a method's training and a model's evaluation, each of one plan entry.

A backend (``harness.backends``) runs them, in this process's workers or on a Ray cluster; both read all they
need from the job (the run's ``harness.plan.planner.Plan`` and the entry) and resolve nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.evaluation.curves import MARK, curve_points, curve_steps, snapshot_name, write_tensorboard
from harness.evaluation.evaluate import BASE, Checkpoint, evaluate, get_or_create_run, recorded_model
from harness.plan.planner import ModelEntry, Plan
from harness.progress import Stages
from harness.results.compute import JobClock
from harness.results.layout import ResultsDir
from harness.results.store import Store
from harness.train.trainer import snapshot_unet_dir, train


@dataclass(frozen=True)
class ModelJob:
    """One model's training, or its sampling and scoring (picklable: it runs in a worker process)."""

    plan: Plan
    model: ModelEntry
    run_id: int  # its run in the results store
    base_model: str  # the base model resolved (``harness.plan.locations.resolve_base_model``)
    stage: Stages


def train_job(job: ModelJob) -> ModelEntry:
    """Train a method from the base (a job); the entry returned holds its trained UNet, to be evaluated."""
    model, options = job.model, job.plan.options
    job.stage(f"{model.method}: training")
    clock = JobClock()
    results = ResultsDir(options.out)
    with Store(results.db) as store:
        store.set_run_status(job.run_id, "running")
        pending: list[tuple[int, dict[str, float]]] = []

        def on_log(step: int, terms: dict[str, float]) -> None:
            pending.append((step, dict(terms)))
            if len(pending) >= 20:
                store.log_training(job.run_id, pending)
                pending.clear()

        try:
            result = train(
                model.method,
                config=model.config,
                base_model=job.base_model,
                data_dir=Path(model.data_dir),
                output_dir=results.model(model.method),
                on_log=on_log,
                resume=True,
                seed=options.seed,
                snapshot_every=(options.eval_every or 0) if model.evaluate else 0,
            )
        except BaseException:
            with contextlib.suppress(HarnessError):  # (a full disk, say) what failed matters more than its record
                store.log_training(job.run_id, pending)
                store.add_compute(job.run_id, clock.figures("train"))
                store.set_run_status(job.run_id, "failed")
            raise
        store.log_training(job.run_id, pending)
        store.add_compute(job.run_id, clock.figures("train"))
        store.add_checkpoint(job.run_id, result.steps, results.relative(result.unet_dir))
        # A UNet trained only for another method to start from has no evaluation to wait for.
        store.set_run_status(
            job.run_id,
            "trained" if model.evaluate else "done",
            {"unet_evals_per_sample": result.unet_evals_per_sample, "training_data": result.data_summary},
        )
    return dataclasses.replace(model, unet=str(result.unet_dir), train=False)


def evaluate_job(job: ModelJob, evaluate_one: Callable[..., None] = evaluate) -> None:
    """Generate the suites and score them: one model's evaluation (a job), and with --eval-every its UNets of
    the steps between.  ``evaluate_one``: how one checkpoint is evaluated, with ``harness.evaluation.evaluate.evaluate``'s
    signature (the Ray backend passes its own, which runs that one's parts on its workers)."""
    model, plan = job.model, job.plan
    checkpoint = Checkpoint(
        job.base_model,
        unet=model.unet,
        unet_subfolder=model.unet_subfolder,
        method=None if model.method == BASE else model.method,
        config=model.config,
    )
    evaluate_one(model.method, job.run_id, checkpoint, plan.protocol, ResultsDir(plan.options.out), job.stage)
    if plan.curve_protocol and model.method != BASE:
        evaluate_curve(job, checkpoint, evaluate_one)


def evaluate_curve(job: ModelJob, checkpoint: Checkpoint, evaluate: Callable[..., None]) -> None:
    """After a trained model's evaluation (in its job): its UNet of every step ``curve_steps`` names, each
    evaluated as run METHOD@STEP by ``evaluate`` (``harness.evaluation.evaluate.evaluate``, or the Ray backend's split of
    it) with the plan's ``curve_protocol``; then its curve to TensorBoard.  A snapshot the training did not
    export (it ran without --eval-every) is skipped, so a rerun evaluates what there is."""
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
            run_id = get_or_create_run(
                store,
                name,
                plan.preset,
                base,
                plan.options.seed,
                snapshot_of=model.method,
                step=step,
                suites=list(curve.suites),
            )
        evaluate(
            name, run_id, dataclasses.replace(checkpoint, unet=unet, unet_subfolder=None), curve, results, job.stage
        )
    with Store(results.db, readonly=True) as store:
        scores = store.scores_frame()
    own = scores["method"].eq(BASE) | scores["method"].str.startswith(model.method + MARK)
    write_tensorboard(curve_points(scores[own]), model.method, results.model(model.method) / "tensorboard")
