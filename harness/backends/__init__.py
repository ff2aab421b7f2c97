"""Where `harness run`'s jobs run: this machine's worker processes (default) or a Ray cluster.

A backend takes the run's two kinds of job (``harness.jobs``: a method's training and a model's
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

import importlib.util
import socket
from collections.abc import Collection
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.jobs import ModelJob
    from harness.plan import RunOptions

BACKENDS = ("local", "ray")


class Backend(Protocol):
    gpus: int  # GPUs the jobs can use (0: a CPU machine or cluster)
    description: str  # how the jobs run, for the run's progress line

    def train(self, job: ModelJob) -> Future: ...  # harness.jobs.train_job's; result: the trained model's entry

    def evaluate(self, job: ModelJob) -> Future: ...  # harness.jobs.evaluate_job's

    def wait_any(self, futures: Collection[Future]) -> set[Future]: ...  # raises a failed job's error

    def __enter__(self) -> Backend: ...

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None: ...


def check_backend(options: RunOptions) -> None:
    """The backend options, before anything is created: a mistake is one line."""
    if options.backend not in BACKENDS:
        raise HarnessError(f"unknown backend {options.backend!r}; available: {', '.join(BACKENDS)}")
    if options.backend != "ray":
        if options.address is not None:
            raise HarnessError("--address names a Ray cluster: use it with --backend ray")
        return
    if options.jobs is not None:
        raise HarnessError("--jobs sizes the local pool; on Ray the cluster's free GPUs (CPUs) decide how many "
                           "jobs run at once")
    if importlib.util.find_spec("ray") is None:
        raise HarnessError("--backend ray needs Ray: pip install 'diffusion-alignment-harness[ray]' "
                           "(or pip install 'ray[default]')")
    if options.address not in (None, "auto"):
        _check_reachable(options.address)


def _check_reachable(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HarnessError(f"--address {address!r}: expected auto or HOST:PORT (the head node's GCS port, "
                           "6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise HarnessError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                           "with `ray start --head` or check the address") from None
