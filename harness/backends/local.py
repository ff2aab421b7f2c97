"""The local backend: the run's jobs on this machine's worker processes (``harness.workers``)."""

from __future__ import annotations

from collections.abc import Collection
from concurrent.futures import Future

from harness.backends.jobs import ModelJob, evaluate_job, train_job
from harness.workers import WorkerPool


class LocalBackend:
    """A training is one job, a model's evaluation another, each on the first free worker; on GPUs each worker
    has ``gpus_per_job`` GPUs of its own, for a training's processes (``harness.workers.worker_gpus``)."""

    def __init__(self, processes: int, gpus_per_job: int) -> None:
        self.pool = WorkerPool(processes, gpus_per_job)
        self.gpus = self.pool.gpus
        self.description = f"{processes} jobs at a time"

    def train(self, job: ModelJob) -> Future:
        return self.pool.submit(train_job, job)

    def evaluate(self, job: ModelJob) -> Future:
        return self.pool.submit(evaluate_job, job)

    def wait_any(self, futures: Collection[Future]) -> set[Future]:
        return self.pool.wait_any(futures)

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        self.pool.__exit__(exc_type, *exc_info)
