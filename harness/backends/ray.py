"""`harness run --backend ray`: the run's jobs on a Ray cluster, with the local run's results.

What runs where:
- The driver (the `harness run` process) plans the run, makes the toy world's data and is the
  one writer of ``results.db`` and of the score cache: a worker may be on another machine, where
  SQLite's locks on the shared results directory do not hold.
- A method's training is one Ray task asking for a GPU (a CPU on a CPU cluster).  It runs the
  local job (``harness.backends.jobs.train_job``) with its store writes recorded in a journal file in the
  results directory (``harness.results.store.StoreJournal``), which the driver makes while the training
  runs (the dashboard shows live curves) and at its end.  A training of N processes (``--train-processes``)
  is that task asking for nothing, which runs the job with its N processes as the workers of a Ray Train
  ``TorchTrainer`` (N GPUs, or N CPUs; Ray places them and sets up the process group, NCCL or gloo), each
  running the local backend's process entry (``harness.backends.jobs.training_process``), the first one's store
  writes recorded in the same journal.
- A model's evaluation is ``harness.evaluation.evaluate.evaluate`` (the local job's: the run's status, its
  stage lines, its cost) run by the driver with its two parts split over the cluster: one shard per free GPU
  (CPU), each a task that loads the pipeline once and generates its part of every suite
  (``generate_suites(..., shard=)``: whole batches of the one-process run, each image with its
  seed, so the bytes are that run's); the driver merges the shards' manifests and records the
  images; then scorer actors, one per free GPU (CPU), each loading a scorer once, score what the
  score cache lacks (none starts when it lacks nothing), reading the images from the results
  directory, in the local run's batches (the same numbers); the driver records the scores
  (``harness.evaluation.evaluate.score_rows``).

A worker process that dies (killed, out of memory, its machine lost) is retried by Ray (a task
runs again, an actor restarts and its call runs again), up to ``RETRIES`` times; the retry
resumes as a rerun does (checkpoints, generation journals, the score cache), so the results do
not change and no row is written twice.  A job that fails (a Python exception) stops the run,
as locally; rerun the same command to resume.  On a CPU every job runs with one thread, as
locally (``harness.workers``), so the numbers are the local run's.

The results directory (``--out``) must be on storage every node sees at the same path, and so
must ``--plugin`` files and local model directories (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import pickle
import shutil
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from harness.api.environment import say
from harness.api.registry import load_plugin, loaded_plugins
from harness.backends.jobs import ModelJob, evaluate_job, failure_line, train_job, trained_already, training_process
from harness.errors import HarnessError
from harness.evaluation.evaluate import Checkpoint, Protocol, evaluate, generate_suites, score_rows
from harness.evaluation.sampling import merge_shards, shard_count
from harness.libraries import quiet_libraries
from harness.results.compute import GPUS_PER_JOB, JobClock
from harness.results.layout import ResultsDir
from harness.results.store import Store, StoreJournal
from harness.scoring import LazyScorer
from harness.scoring.cache import SCORE_BATCH, ScoreCache, score_images
from harness.train.trainer import TrainResult
from harness.workers import one_cpu_thread, wait_any

RETRIES = 3  # times a job whose worker died runs again
JOURNAL_POLL_S = 5.0  # how often the driver makes the writes a running training recorded
_POLL_S = 1.0  # how often a waiting driver thread checks that the run goes on

Result = TypeVar("Result")


class RayBackend:
    """Jobs on a Ray cluster: the one at ``address`` ("auto", HOST:PORT), or one started here (None)."""

    def __init__(self, address: str | None) -> None:
        import ray  # heavy, and an optional extra: imported once a run uses it (so are the calls below)

        self.started_here = not ray.is_initialized()
        if self.started_here:
            try:
                # "local": a new instance on this machine, never one that happens to run here already.
                context = ray.init(address=address or "local", logging_level=logging.WARNING)
            except ConnectionError as exc:
                where = f"--address {address}" if address else "starting Ray on this machine"
                raise HarnessError(f"{where}: {_first_line(exc)}") from None
            dashboard = context.dashboard_url
        else:  # a caller (a test, a notebook) connected this process already
            dashboard = None
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.description = (
            f"on Ray ({int(resources.get('CPU', 0))} CPUs, {self.gpus} GPUs"
            + (f"; dashboard http://{dashboard}" if dashboard else "")
            + ")"
        )
        # What one job asks for: a GPU, or a CPU on a CPU cluster (one thread each, as locally).
        self.slot = {"num_cpus": 1, "num_gpus": GPUS_PER_JOB if self.gpus else 0}
        self.setup = _WorkerSetup(cwd=os.getcwd(), plugins=loaded_plugins())
        self.recorded, self.generate_shard = ray.remote(_recorded), ray.remote(_generate_shard)
        self.scorers = ray.remote(_Scorers)
        self.stopping = threading.Event()
        # The driver's side of each job (waiting, writing the results) runs on a thread of its own.
        self.threads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="ray-job")

    # -- the two kinds of job -------------------------------------------------------------------------
    def train(self, job: Any) -> Future:
        return self.threads.submit(self._train, job)

    def evaluate(self, job: Any) -> Future:
        return self.threads.submit(evaluate_job, job, self._evaluate)

    def wait_any(self, futures: Collection[Future]) -> set[Future]:
        return wait_any(futures)

    def _train(self, job: Any) -> Any:
        if trained_already(job) is not None:  # a rerun's: recorded here, no worker started
            return train_job(job)
        results = ResultsDir(job.plan.options.out)
        journal = _training_journal(job)
        run, slot = train_job, self.slot
        if job.model.processes > 1:  # the task only waits: the TorchTrainer's workers hold the GPUs (CPUs)
            in_workers = functools.partial(_train_in_workers, use_gpu=bool(self.gpus), cwd=self.setup.cwd)
            run, slot = functools.partial(train_job, in_processes=in_workers, on_gpu=bool(self.gpus)), {"num_cpus": 0}
        # The task's name prefixes its lines in the run's output and names it on the dashboard.
        ref = self.recorded.options(**slot, max_retries=RETRIES, name=f"{job.model.method} training").remote(
            run, job, journal, self.setup
        )
        with Store(results.db) as store:
            made = 0
            while not self._ready(ref, timeout=JOURNAL_POLL_S):
                made = journal.replay(store, made)
            journal.replay(store, made)
        journal.path.unlink(missing_ok=True)  # made: a rerun must not add its compute figures again
        with contextlib.suppress(OSError):  # the last training's journal leaves no folder behind
            journal.path.parent.rmdir()
        return self._result(ref, f"{job.model.method}'s training")

    def _evaluate(
        self,
        name: str,
        run_id: int,
        checkpoint: Checkpoint,
        protocol: Protocol,
        results: ResultsDir,
        stage: Callable[[str], None],
    ) -> None:
        """``harness.evaluation.evaluate.evaluate``, with its generation in shards on the workers, its scoring on actors."""
        evaluate(
            name,
            run_id,
            checkpoint,
            protocol,
            results,
            stage,
            generate=self._generate,
            score=self._score,
            clock=lambda: JobClock(on_gpu=False),
        )  # the driver holds no GPU: the workers' hours are added

    def _generate(
        self, name: str, run_id: int, checkpoint: Checkpoint, protocol: Protocol, results: ResultsDir, store: Any
    ) -> dict[str, list[dict]]:
        """``harness.evaluation.evaluate.generate_suites``, in shards of whole batches, one per free GPU (CPU)."""
        n_shards = max(1, min(self._free_slots(), _most_batches(protocol)))
        say(f"   {name}: generation in {n_shards} shard{'s' * (n_shards > 1)}")
        refs = [
            self.generate_shard.options(
                **self.slot, max_retries=RETRIES, name=f"{name} generation {r + 1}/{n_shards}"
            ).remote(name, run_id, checkpoint, protocol, results, (r, n_shards), self.setup)
            for r in range(n_shards)
        ]
        shards = [self._result(ref, f"{name}'s generation, shard {r} of {n_shards}") for r, ref in enumerate(refs)]
        manifests = {}
        for suite, (images, manifest) in _merged_images(results, [entries for entries, _ in shards]).items():
            store.add_images(run_id, **images)
            manifests[suite] = manifest
        for _, cost in shards:
            store.add_compute(run_id, _hours(cost))
        return manifests

    def _score(
        self,
        name: str,
        run_id: int,
        manifests: dict[str, list[dict]],
        scorers: Sequence[str],
        scorer_options: Mapping[str, Mapping[str, Any]],
        results: ResultsDir,
        store: Any,
    ) -> None:
        """``harness.evaluation.evaluate.score_suites``, what the score cache lacks scored on actors, one per free GPU
        (CPU), started at the first batch to score: none when the cache has every score."""
        n_images = sum(len(rows) for rows in manifests.values())
        actors = _ScorerActors(self, most=math.ceil(n_images / SCORE_BATCH))
        try:
            with ScoreCache(results.score_cache) as cache:
                for scorer_name in scorers:
                    scorer = _RemoteScorer(actors, scorer_name, **scorer_options.get(scorer_name, {}))
                    for suite_name, rows in manifests.items():
                        folder = results.images(name, suite_name)
                        values = score_images(
                            scorer,
                            [_ImageFile(folder / row["path"]) for row in rows],
                            [row["prompt"] for row in rows],
                            [row["sha256"] for row in rows],
                            cache=cache,
                            batch_size=len(rows),
                        )  # the scorer splits the batches
                        store.add_scores(run_id, suite=suite_name, rows=score_rows(scorer, rows, values))
            for actor in actors.started:
                store.add_compute(run_id, _hours(self._result(actor.cost.remote(), "a scorer's cost")))
        finally:
            import ray

            for actor in actors.started:
                ray.kill(actor)

    # -- waiting for Ray --------------------------------------------------------------------------------
    def _ready(self, ref: Any, timeout: float) -> bool:
        """Whether ``ref``'s job has ended, after waiting up to ``timeout`` s (a stopping run cancels it)."""
        import ray

        waited = 0.0
        while waited < timeout:
            if self.stopping.is_set():
                with contextlib.suppress(ValueError):  # an actor's call cannot be forced: its actor is killed
                    ray.cancel(ref, force=True)
                raise HarnessError("stopped: another job of the run failed")
            done, _ = ray.wait([ref], timeout=min(_POLL_S, timeout - waited))
            if done:
                return True
            waited += _POLL_S
        return False

    def _result(self, ref: Any, what: str) -> Any:
        """``ref``'s value once its job ends; its error as the job raised it (a HarnessError stays one line)."""
        while not self._ready(ref, timeout=_POLL_S):
            pass
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, BaseException) else exc) from None
        except ray.exceptions.RayError as exc:  # the worker died more often than Ray retries
            raise HarnessError(
                f"{what} failed on Ray after {RETRIES} retries: {_first_line(exc)}; rerun the same command to resume"
            ) from None

    def _free_slots(self) -> int:
        import ray

        return int(ray.available_resources().get("GPU" if self.gpus else "CPU", 0))

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        if exc_type is not None:
            self.stopping.set()  # the other jobs stop too; a rerun resumes them
        self.threads.shutdown(wait=True, cancel_futures=True)
        if self.started_here:
            import ray

            ray.shutdown()


# -- what runs on the workers --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _WorkerSetup:
    """What a Ray worker takes from the driver to run jobs as a local worker does."""

    cwd: str  # relative paths (--out runs) mean what they mean to the driver
    plugins: list[str]

    def apply(self) -> None:
        if os.path.isdir(self.cwd):
            os.chdir(self.cwd)
        for plugin in self.plugins:
            if plugin not in loaded_plugins():
                load_plugin(plugin)


def _one_thread() -> Any:
    import torch

    return one_cpu_thread(on_gpu=torch.cuda.is_available())


def _recorded(fn: Callable[[Any], Result], job: Any, journal: Any, setup: _WorkerSetup) -> Result:
    """``fn(job)`` with its store writes recorded in ``journal``."""
    setup.apply()
    quiet_libraries()
    with journal.recording(), _one_thread():
        return fn(job)


def _training_journal(job: ModelJob) -> StoreJournal:
    return StoreJournal(ResultsDir(job.plan.options.out).ray_journals / f"{job.model.method}-training.jsonl")


def _train_in_workers(job: ModelJob, use_gpu: bool, cwd: str) -> TrainResult:
    """The job's training as the ``job.model.processes`` workers of a Ray Train ``TorchTrainer`` (one GPU each,
    or one CPU), each ``_training_process``.  A worker that fails or dies ends the training (Ray stops the
    others) in one HarnessError line; a rerun resumes from the last checkpoint, as locally."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    # The local launcher's exchange folder (the job in, the result and the errors out), in the results
    # directory: the workers may be on other nodes.
    exchange = (ResultsDir(job.plan.options.out).ray_journals / f"{job.model.method}-processes").resolve()
    shutil.rmtree(exchange, ignore_errors=True)  # an attempt killed earlier
    exchange.mkdir(parents=True)
    try:
        (exchange / "job.pickle").write_bytes(pickle.dumps((job, loaded_plugins())))
        trainer = TorchTrainer(
            _training_process,
            train_loop_config={"exchange": exchange, "journal": _training_journal(job), "cwd": cwd, "job": job},
            scaling_config=ScalingConfig(num_workers=job.model.processes, use_gpu=use_gpu),
            run_config=RunConfig(
                name="ray-train", storage_path=str(exchange), failure_config=FailureConfig(max_failures=0)
            ),
        )
        try:
            trainer.fit()
        except TrainingFailedError as failed:
            raise HarnessError(_workers_failure_line(job, failed, exchange)) from None
        return pickle.loads((exchange / "result.pickle").read_bytes())
    finally:
        shutil.rmtree(exchange, ignore_errors=True)


def _training_process(config: dict[str, Any]) -> None:
    """One worker of ``_train_in_workers``: the local backend's training process (Ray set up the process group),
    with the first process's store writes recorded in the training's journal; on a CPU, the workers' CPU time
    is then added to the training's cost (locally the launching job counts its children's)."""
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    started = time.process_time()
    with config["journal"].recording():
        try:
            training_process(config["exchange"])
        except SystemExit as exit:  # its error was written to the exchange folder
            raise RuntimeError(f"training process ended with exit status {exit.code}") from None
        import torch
        import torch.distributed as dist

        if not torch.cuda.is_available():
            seconds = torch.tensor([time.process_time() - started], dtype=torch.float64)
            dist.all_reduce(seconds)
            if dist.get_rank() == 0:
                job = config["job"]
                hours = seconds.item() / 3600
                with Store(ResultsDir(job.plan.options.out).db) as store:
                    store.add_compute(job.run_id, {"cpu_hours": hours, "train_cpu_hours": hours})


def _workers_failure_line(job: ModelJob, failed: Exception, exchange: Path) -> str:
    """The local launcher's line for a failed training (``failure_line``): a worker that died first (the others'
    errors are its consequence: a collective's lost peer), else a process's own error."""
    name, processes = job.model.method, job.model.processes
    failures = getattr(failed, "worker_failures", {})  # none when Ray Train's controller failed
    # A process that failed on its own wrote its error (training_process) before it ended.
    died = [rank for rank in sorted(failures) if not any(exchange.glob(f"*-{rank}.txt"))]
    if died:
        return (
            f"{name}: training process {died[0]} of {processes} died on Ray ({_first_line(failures[died[0]])}); "
            "the others were stopped; a rerun resumes from the last checkpoint"
        )
    if any(exchange.glob("error-*.txt")) or any(exchange.glob("traceback-*.txt")):
        return failure_line(job, {}, exchange)
    return f"{name}: its {processes} training processes failed on Ray: {_first_line(failed)}; rerun to resume"


def _generate_shard(
    name: str,
    run_id: int,
    checkpoint: Checkpoint,
    protocol: Protocol,
    results: ResultsDir,
    shard: tuple[int, int],
    setup: _WorkerSetup,
) -> tuple[list[dict], dict[str, float]]:
    """Generate ``shard`` of the model's suites; returns the store writes that record it, and its cost."""
    setup.apply()
    quiet_libraries()
    clock = JobClock()
    journal = StoreJournal()
    with journal.recording(), _one_thread(), Store(results.db) as store:
        generate_suites(name, run_id, checkpoint, protocol, results, store, shard=shard)
    return journal.entries(), clock.figures("eval")


class _Scorers:
    """Scores image files with the run's scorers, each loaded once, at its first use."""

    def __init__(self, setup: _WorkerSetup) -> None:
        setup.apply()
        self.clock = JobClock(on_gpu=_on_gpu())
        self.scorers: dict[str, Any] = {}

    def _scorer(self, name: str, locations: dict[str, Any]) -> Any:
        key = json.dumps([name, locations], sort_keys=True)
        if key not in self.scorers:
            # Loaded as the driver's LazyScorer would load it: refused unless its version is the one the driver
            # looked the cache up with.
            self.scorers[key] = LazyScorer(name, **locations).loaded()
            if "transformers" in sys.modules:  # a model scorer: its libraries' load bars are noise
                quiet_libraries()
        return self.scorers[key]

    def score(self, name: str, locations: dict[str, Any], paths: list[str], prompts: list[str]) -> list[float]:
        scorer = self._scorer(name, locations)
        with _threads_as_locally():
            # The paths stand in for the content keys: the driver looked the cache up already.
            return score_images(scorer, paths, prompts, keys=paths, batch_size=len(paths))

    def cost(self) -> dict[str, float]:
        return self.clock.figures("eval")


def _on_gpu() -> bool:
    import ray

    return bool(ray.get_gpu_ids())


def _threads_as_locally() -> Any:
    """One thread on a CPU, if the scorer uses torch (the toy world's programmatic rewards do not)."""
    return _one_thread() if "torch" in sys.modules else contextlib.nullcontext()


# -- the driver's side of an evaluation -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ImageFile:
    """An image the scorer actors read from the results directory: the driver never opens it."""

    path: Path


class _ScorerActors:
    """An evaluation's scorer actors, started when first needed: one per GPU (CPU) free then, at most ``most``."""

    def __init__(self, backend: RayBackend, most: int) -> None:
        self.backend, self.most = backend, most
        self.started: list[Any] = []

    def get(self) -> list[Any]:
        if not self.started:
            backend = self.backend
            self.started = [
                backend.scorers.options(**backend.slot, max_restarts=RETRIES, max_task_retries=RETRIES).remote(
                    backend.setup
                )
                for _ in range(max(1, min(backend._free_slots(), self.most)))
            ]
        return self.started


class _RemoteScorer(LazyScorer):
    """The driver's handle on a scorer loaded on the actors (its identity known here): ``score`` spreads the
    batches over them."""

    def __init__(self, actors: _ScorerActors, name: str, **locations: Any) -> None:
        super().__init__(name, **locations)
        self.actors, self.backend = actors, actors.backend

    def score(self, images: list[_ImageFile], prompts: list[str]) -> list[float]:
        actors = self.actors.get()
        refs = [
            actors[i % len(actors)].score.remote(
                self.name,
                self.locations,
                [str(image.path) for image in images[start : start + SCORE_BATCH]],
                prompts[start : start + SCORE_BATCH],
            )
            for i, start in enumerate(range(0, len(images), SCORE_BATCH))
        ]
        return [value for ref in refs for value in self.backend._result(ref, f"scoring with {self.name}")]


def _most_batches(protocol: Protocol) -> int:
    """The batches of the protocol's largest suite in a one-process run: more shards would have nothing to do."""

    def batches(suite_name: str) -> int:
        settings = protocol.sampling(suite_name)
        return shard_count(len(protocol.load_suite(suite_name)), settings["images_per_prompt"], settings["batch_size"])

    return max(batches(suite_name) for suite_name in protocol.suites)


def _merged_images(results: ResultsDir, shards: list[list[dict]]) -> dict[str, tuple[dict, list[dict]]]:
    """By suite: the ``add_images`` call the shards recorded, with every shard's rows in prompt order, and the
    suite's manifest rows, the manifest written from them (``harness.evaluation.sampling.merge_shards``)."""
    suites: dict[str, dict] = {}
    for entries in shards:
        for entry in entries:
            if entry["write"] != "add_images":
                raise HarnessError(f"a generation shard made a store write the driver does not merge: {entry['write']}")
            images = entry["kwargs"]
            suites.setdefault(images["suite"], {**images, "rows": []})["rows"] += images["rows"]
    merged = {}
    for suite, images in suites.items():
        # The store's paths are relative to the results directory, the manifest's to the suite's folder.
        folder = Path(images["rows"][0]["path"]).parent
        manifest = merge_shards(
            results.file(folder), [{**row, "path": Path(row["path"]).name} for row in images["rows"]]
        )
        merged[suite] = ({**images, "rows": [{**row, "path": str(folder / row["path"])} for row in manifest]}, manifest)
    return merged


def _hours(figures: dict[str, float]) -> dict[str, float]:
    """A worker's cost without its wall time: the evaluation's is the driver's (its parts ran side by side)."""
    return {key: value for key, value in figures.items() if not key.endswith("wall_s")}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
