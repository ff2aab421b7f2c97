"""Where `harness run`'s jobs run: this machine's worker processes (default) or a Ray cluster.

A backend takes the run's two kinds of job (``harness.backends.jobs``: a method's training and a model's
evaluation, generation and scoring of every suite, each of one entry of the run's plan) and hands
back a ``Future`` for each; the run schedules them the same way on both (``harness.run.run_validated``):

- ``local`` (``harness.workers.WorkerPool``): one worker process per core on a CPU, per GPU on
  a GPU machine; a training or an evaluation is one job on one worker.
- ``ray`` (``harness.backends.ray``): each job a Ray task or actor with its resource request,
  an evaluation split into prompt shards over the free GPUs (CPUs); the driver is the one
  writer of the results database.  Ray is an optional extra: ``pip install '.[ray]'``.

Both give the same results, byte for byte on a CPU (tested).
"""

from __future__ import annotations

from collections.abc import Collection
from concurrent.futures import Future
from typing import Protocol

from harness.backends.jobs import ModelJob


class Backend(Protocol):
    gpus: int  # GPUs the jobs can use (0: a CPU machine or cluster)
    description: str  # how the jobs run, for the run's progress line

    def train(
        self, job: ModelJob
    ) -> Future: ...  # harness.backends.jobs.train_job's; result: the trained model's entry

    def evaluate(self, job: ModelJob) -> Future: ...  # harness.backends.jobs.evaluate_job's

    def wait_any(self, futures: Collection[Future]) -> set[Future]: ...  # raises a failed job's error

    def __enter__(self) -> Backend: ...

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None: ...
