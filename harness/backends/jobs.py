"""The two kinds of job of `harness run`: a method's training and a model's evaluation, each of one plan entry.

A backend (``harness.backends``) runs them, in this process's workers or on a Ray cluster; both read all they
need from the job (the run's ``harness.plan.planner.Plan`` and the entry) and resolve nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api.registry import load_plugin, loaded_plugins
from harness.atomic import replacing
from harness.distributed import rank_and_size, torchrun_process_group
from harness.errors import HarnessError
from harness.evaluation.curves import MARK, curve_points, curve_steps, snapshot_name, write_tensorboard
from harness.evaluation.evaluate import BASE, Checkpoint, evaluate, get_or_create_run, recorded_model
from harness.libraries import quiet_libraries
from harness.plan.planner import ModelEntry, Plan
from harness.progress import Stages
from harness.results.compute import JobClock
from harness.results.layout import ResultsDir
from harness.results.store import Store
from harness.train.trainer import TrainResult, finished_training, snapshot_unet_dir, train
from harness.workers import one_cpu_thread, start_method


@dataclass(frozen=True)
class ModelJob:
    """One model's training, or its sampling and scoring (picklable: it runs in a worker process)."""

    plan: Plan
    model: ModelEntry
    run_id: int  # its run in the results store
    base_model: str  # the base model resolved (``harness.plan.locations.resolve_base_model``)
    stage: Stages


def train_job(
    job: ModelJob,
    in_processes: Callable[[ModelJob], TrainResult] | None = None,
    on_gpu: bool | None = None,
) -> ModelEntry:
    """Train a method from the base (a job), in this process or as ``model.processes`` data-parallel processes
    (``in_processes``: ``train_in_processes`` unless a backend starts them its own way); the entry returned holds
    its trained UNet, to be evaluated.  ``on_gpu``: whether the training's processes have GPUs (None: whether this
    process has one)."""
    model = job.model
    job.stage(f"{model.method}: training" + (f" as {model.processes} processes" if model.processes > 1 else ""))
    clock = JobClock(on_gpu=on_gpu, processes=model.processes)
    results = ResultsDir(job.plan.options.out)
    with Store(results.db) as store:
        store.set_run_status(job.run_id, "running")
        try:
            if model.processes > 1:  # no processes started for a training that ended already
                result = trained_already(job) or (in_processes or train_in_processes)(job)
            else:
                result = train_logged(job, store)
        except BaseException:
            with contextlib.suppress(HarnessError):  # (a full disk, say) what failed matters more than its record
                store.add_compute(job.run_id, clock.figures("train"))
                store.set_run_status(job.run_id, "failed")
            raise
        store.add_compute(job.run_id, clock.figures("train"))
        store.add_checkpoint(job.run_id, result.steps, results.relative(result.unet_dir))
        # A UNet trained only for another method to start from has no evaluation to wait for.
        store.set_run_status(
            job.run_id,
            "trained" if model.evaluate else "done",
            {
                "unet_evals_per_sample": result.unet_evals_per_sample,
                "reward_calls_per_sample": result.reward_calls_per_sample,
                "training_data": result.data_summary,
            },
        )
    return dataclasses.replace(model, unet=str(result.unet_dir), train=False)


def _training(job: ModelJob) -> dict[str, Any]:
    """The arguments of the job's ``train`` call that say what it trains (those of ``finished_training``)."""
    model, options = job.model, job.plan.options
    return {
        "config": model.config,
        "base_model": job.base_model,
        "data_dir": Path(model.data_dir),
        "output_dir": ResultsDir(options.out).model(model.method),
        "seed": options.seed,
    }


def trained_already(job: ModelJob) -> TrainResult | None:
    """The job's training's result if it ended already with the job's settings (a rerun's), else None."""
    return finished_training(job.model.method, **_training(job))


def train_logged(job: ModelJob, store: Store | None) -> TrainResult:
    """The job's training in this process (one of its processes under torchrun), its log written to ``store``
    (None: a process other than the first, whose log is the first one's)."""
    model, options = job.model, job.plan.options
    pending: list[tuple[int, dict[str, float]]] = []

    def on_log(step: int, terms: dict[str, float]) -> None:
        pending.append((step, dict(terms)))
        if len(pending) >= 20 and store is not None:
            store.log_training(job.run_id, pending)
            pending.clear()

    try:
        return train(
            model.method,
            **_training(job),
            on_log=on_log,
            resume=True,
            snapshot_every=(options.eval_every or 0) if model.evaluate else 0,
        )
    finally:
        if store is not None:
            with contextlib.suppress(HarnessError):  # (a full disk, say) what failed matters more than its log
                store.log_training(job.run_id, pending)


# Where the processes are spawned (GPUs), each runs ``training_process`` as a module: harness/backends/train_process.py
# (named, not imported: it imports this module).
PROCESS_MODULE = "harness.backends.train_process"
CONSEQUENCE_WAIT_S = 2.0  # a failed process's wait before it ends (training_process), 20x the launcher's watch


def train_in_processes(job: ModelJob) -> TrainResult:
    """The job's training as ``job.model.processes`` data-parallel processes on this machine, started by torch's
    elastic launcher (what ``torchrun --standalone`` runs), each ``train_logged``; the first writes the log and
    the checkpoints.  A process that fails or is killed stops the others (the launcher watches them every 0.1 s,
    and a collective with a dead peer fails at once) and is one HarnessError line; a rerun resumes from the last
    checkpoint.  On GPUs process k uses the k-th GPU this job sees: the local pool gives each worker GPUs of its
    own (``harness.workers.worker_gpus``), and the processes inherit its CUDA_VISIBLE_DEVICES."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    processes = job.model.processes
    # Forked on a Linux CPU machine, with this process's imports and plugins, as the local workers are
    # (harness.workers); spawned as fresh interpreters where CUDA is (it cannot be used in a forked child).
    method = start_method(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    with tempfile.TemporaryDirectory(prefix="harness-train-") as folder, _launcher_quiet():
        exchange = Path(folder)
        (exchange / "job.pickle").write_bytes(pickle.dumps((job, loaded_plugins())))
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=processes,
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
            run_id=f"harness-{uuid.uuid4().hex}",
            max_restarts=0,  # a rerun resumes; restarting here would hide the failure
            monitor_interval=0.1,
            start_method=method,
        )
        try:
            if method == "fork":
                elastic_launch(config, _forked_training_process)(exchange)
            else:
                elastic_launch(config, sys.executable)("-m", PROCESS_MODULE, str(exchange))
        except ChildFailedError as failed:
            raise HarnessError(failure_line(job, failed.failures, exchange)) from None
        return pickle.loads((exchange / "result.pickle").read_bytes())


def _forked_training_process(exchange: Path) -> int:
    """``training_process`` in a process the launcher forked, with the signal handlers of a fresh interpreter (as
    where it spawns them), not the launcher's: the launcher stops the others of a failed training by SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return training_process(exchange)


def training_process(exchange: Path) -> int:
    """One process of ``train_in_processes`` (or of a Ray Train run): reads the job (and the plugins to load) from
    ``EXCHANGE/job.pickle``, joins the process group (gloo on a CPU, one thread; NCCL on GPUs) and trains with
    ``train_logged``; the first process writes the training log to the results store and ``EXCHANGE/result.pickle``.
    A HarnessError is written to ``EXCHANGE/error-<rank>.txt`` for the launching job to report as its one line, any
    other error's traceback to ``EXCHANGE/traceback-<rank>.txt``."""
    import torch
    from accelerate.state import PartialState

    job, plugins = pickle.loads((exchange / "job.pickle").read_bytes())
    for plugin in plugins:
        if plugin not in loaded_plugins():  # a forked process has them already
            load_plugin(plugin)
    # accelerate's per-process state: a forked process holds its parent's copy, made without a process group.
    PartialState._reset_state()
    quiet_libraries()
    if not torch.cuda.is_available():
        # One thread, as every job on a CPU: accelerate otherwise sets cores / processes threads (and says so).
        os.environ["OMP_NUM_THREADS"] = "1"
    with torchrun_process_group(), one_cpu_thread(on_gpu=torch.cuda.is_available()):
        rank, _ = rank_and_size()
        try:
            if rank:
                train_logged(job, None)
                return 0
            with Store(ResultsDir(job.plan.options.out).db) as store:
                result = train_logged(job, store)
            with replacing(exchange / "result.pickle") as temporary:
                temporary.write_bytes(pickle.dumps(result))
        except HarnessError as exc:
            (exchange / f"error-{rank}.txt").write_text(str(exc), encoding="utf-8")
            raise SystemExit(2) from None
        except Exception:
            # Often only the consequence of another process's failure (a collective's peer gone): the launching
            # job prints the one that caused it.  Forked, the launcher reports only the first process to end, so
            # this one waits: the launcher stops it meanwhile if another ended (killed, say) before.
            (exchange / f"traceback-{rank}.txt").write_text(traceback.format_exc(), encoding="utf-8")
            time.sleep(CONSEQUENCE_WAIT_S)
            raise SystemExit(1) from None
    return 0


@contextlib.contextmanager
def _launcher_quiet() -> Iterator[None]:
    """While the launcher runs: its log lines off (a failure is our one line), and afterwards this process's own
    SIGTERM / SIGINT handlers back (the launcher replaces them with ones that raise its own exception)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    launcher_log = logging.getLogger("torch.distributed.elastic")
    level = launcher_log.level
    launcher_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        launcher_log.setLevel(level)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def failure_line(job: ModelJob, failures: dict[int, Any], exchange: Path) -> str:
    """One line for a failed multi-process training, naming the cause rather than its consequences (the
    launcher's SIGTERM to the others, their collectives' lost peer): a process's HarnessError, else a process
    killed from outside (SIGKILL: the OOM killer, a user), else the first error's last line (its traceback printed
    above it)."""
    name, processes = job.model.method, job.model.processes
    errors = sorted(exchange.glob("error-*.txt"))
    if errors:
        return errors[0].read_text(encoding="utf-8")
    killed = [(rank, failure) for rank, failure in sorted(failures.items()) if failure.exitcode < 0]
    from_outside = [(rank, failure) for rank, failure in killed if failure.signal_name() != "SIGTERM"]
    tracebacks = sorted(exchange.glob("traceback-*.txt"), key=lambda path: path.stat().st_mtime)
    if tracebacks and not from_outside:
        text = tracebacks[0].read_text(encoding="utf-8")
        print(text, file=sys.stderr, end="", flush=True)
        rank = tracebacks[0].stem.removeprefix("traceback-")
        return f"{name}: training process {rank} of {processes} failed: {text.strip().splitlines()[-1]}"
    if killed:
        rank, failure = (from_outside or killed)[0]
        return (
            f"{name}: training process {rank} of {processes} ended with signal {failure.signal_name()}; the others "
            "were stopped; a rerun resumes from the last checkpoint"
        )
    rank, failure = min(failures.items())
    return f"{name}: training process {rank} of {processes} ended with exit status {failure.exitcode}"


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
