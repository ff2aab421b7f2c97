"""Independent jobs side by side in worker processes: one thread each on a CPU, one GPU each.

`harness run` makes each model's training one job and its evaluation (sampling and scoring
the suites) another; the jobs share nothing but the results directory, so they can run at
once.  A pool has one worker per core on a CPU, one per GPU: more jobs than that at once
would share the cores, and that is slower than queueing them (below).

On a CPU every job runs with one thread, in a worker process or not:
- the toy models' ops are too small for two threads to share well (a toy DPO step:
  132 ms with 2 threads; two 1-thread processes side by side take 184 ms each, 1.4x
  the throughput; ``bench/parallel_models.py``);
- CPU kernels split their reductions by thread count, so with one thread a
  model's numbers depend neither on ``--jobs`` nor on the machine's core count.
On GPUs, worker k sees only GPU k (modulo the visible ones: more workers than GPUs share them); threads are
left alone.  Where a training runs as N processes (``--train-processes``), worker k sees its own N GPUs instead,
``k.N`` to ``k.N + N - 1``, so the trainings that run at once never share one (``worker_gpus``).

One worker per core, not per job: on 2 cores, four toy trainings took 1.07x to 1.22x the time
with four workers sharing the cores as with two workers taking two each, and six took 1.17x
with three workers as with two (``bench/parallel_models.py --models 4``): the 2 cores share a
32 MB cache, which several models' weights, optimizer states and activations overflow.

Workers are forked on a Linux CPU machine: they start with this process's imports (torch,
diffusers, plugins), where each spawned worker spent ~10 CPU-seconds importing them again.
The pool forks all its workers at once, before its own threads start, and each worker sets
one thread before its first torch op (as PyTorch's DataLoader workers do after a fork), so
no worker uses the OpenMP threads it did not inherit.  With GPUs they are spawned, as CUDA
cannot be used in a forked child, and load the parent's plugins themselves.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from harness.api.registry import load_plugin, loaded_plugins
from harness.errors import HarnessError
from harness.libraries import quiet_libraries

Job = TypeVar("Job")
Result = TypeVar("Result")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_processes(n_jobs: int, gpus_per_job: int = 1) -> int:
    """One worker per ``gpus_per_job`` GPUs on a GPU machine, one per core on a CPU (never more than there are
    jobs)."""
    gpus = _gpu_count()
    if gpus:
        return max(1, min(n_jobs, gpus // gpus_per_job))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n_jobs, cores))


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names them (indices or UUIDs); none on a CPU."""
    count = _gpu_count()
    return os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(count)))).split(",")[:count]


def worker_gpus(visible: Sequence[str], workers: int, gpus_per_worker: int) -> list[str]:
    """Each worker's CUDA_VISIBLE_DEVICES: one of the ``visible`` GPUs each, several workers sharing one where
    there are fewer GPUs than workers (as ever); ``gpus_per_worker`` > 1 (a training of that many processes)
    disjoint blocks of that many, a training's processes being one per GPU.  Empty on a CPU (no GPUs); a
    HarnessError, the run's one line, when the blocks need more GPUs than there are."""
    if not visible:
        return []
    if gpus_per_worker == 1:
        return [visible[slot % len(visible)] for slot in range(workers)]
    if gpus_per_worker > len(visible):
        raise HarnessError(
            f"a training of {gpus_per_worker} processes needs {gpus_per_worker} GPUs, one each; this machine has "
            f"{len(visible)}"
        )
    if workers * gpus_per_worker > len(visible):
        raise HarnessError(
            f"{workers} jobs at once with trainings of {gpus_per_worker} processes need {workers * gpus_per_worker} "
            f"GPUs, {gpus_per_worker} each; this machine has {len(visible)}: --jobs {len(visible) // gpus_per_worker} "
            "fits"
        )
    return [",".join(visible[slot * gpus_per_worker : (slot + 1) * gpus_per_worker]) for slot in range(workers)]


def start_method(gpus: int) -> str:
    """How worker processes start: forked on a Linux CPU machine, spawned otherwise (see the module's doc)."""
    return "fork" if not gpus and sys.platform == "linux" else "spawn"


@contextmanager
def one_cpu_thread(on_gpu: bool) -> Iterator[None]:
    import torch

    if on_gpu:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _unwind(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


def _init_worker(slots: Any, devices: list[str], plugins: list[str]) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, by terminating the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Terminated (a job failed elsewhere, or Ctrl-C), a job unwinds instead of dying mid-write: it
    # removes its temporaries (half a checkpoint) and rolls back its database transaction.
    signal.signal(signal.SIGTERM, _unwind)
    slot = slots.get()
    if devices:  # before anything initialises CUDA in this process (and its trainings' processes inherit it)
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[slot]
    os.environ["TQDM_POSITION"] = str(slot)  # each worker's progress bars on their own line
    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a terminated worker would leave for
    # the resource tracker to report as leaked; bars of one process need only a thread lock.
    tqdm.set_lock(threading.RLock())
    for plugin in plugins:
        load_plugin(plugin)
    quiet_libraries()
    if not devices:
        import torch

        torch.set_num_threads(1)


class WorkerPool:
    """``with WorkerPool(n) as pool``: ``submit`` jobs, then ``wait_any`` or ``results``; the first failure stops every worker.

    Jobs start in the order they are submitted, each on the first free worker.  ``fn`` must be
    a module-level function and the jobs picklable.  With one process the jobs run here, one
    thread on a CPU, each as soon as it is submitted.  ``gpus_per_worker``: the GPUs each worker sees
    (``worker_gpus``), for jobs that run several processes of their own.
    """

    def __init__(self, processes: int, gpus_per_worker: int = 1) -> None:
        self.gpus = _gpu_count()
        self.executor = None
        if processes > 1:
            method = start_method(self.gpus)
            context = multiprocessing.get_context(method)
            slots = context.SimpleQueue()  # unlike Queue, no feeder thread for a fork to copy
            for slot in range(processes):
                slots.put(slot)
            plugins = loaded_plugins() if method == "spawn" else []  # a forked worker has them already
            devices = worker_gpus(visible_gpus(), processes, gpus_per_worker)
            # A worker that dies (killed, out of memory) fails its job with BrokenProcessPool instead of hanging.
            self.executor = ProcessPoolExecutor(
                processes, mp_context=context, initializer=_init_worker, initargs=(slots, devices, plugins)
            )

    def submit(self, fn: Callable[[Job], Result], job: Job) -> Future:
        if self.executor is not None:
            return self.executor.submit(fn, job)
        future: Future = Future()
        with one_cpu_thread(on_gpu=self.gpus > 0):
            future.set_result(fn(job))
        return future

    def wait_any(self, futures: Collection[Future]) -> set[Future]:
        return wait_any(futures)

    def results(self, futures: Sequence[Future]) -> list:
        """The futures' results in order, once all are done, or the first failure."""
        pending = set(futures)
        while pending:
            pending -= self.wait_any(pending)
        return [future.result() for future in futures]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        if self.executor is None:
            return
        if exc_type is not None:
            _stop_workers(self.executor)  # the other jobs stop too; a rerun resumes them from their checkpoints
        self.executor.shutdown(wait=True, cancel_futures=True)


def wait_any(futures: Collection[Future]) -> set[Future]:
    """The futures that are done, once one is; a failed job's exception is raised here."""
    done, _ = wait(futures, return_when=FIRST_COMPLETED)
    for future in done:
        if future.exception() is not None:
            raise future.exception()
    return done


def run_jobs(fn: Callable[[Job], Result], jobs: Sequence[Job], processes: int) -> list[Result]:
    """``[fn(job) for job in jobs]``, on ``processes`` workers; the first failure stops them all."""
    with WorkerPool(min(processes, len(jobs))) as pool:
        return pool.results([pool.submit(fn, job) for job in jobs])


def _stop_workers(executor: Any) -> None:
    if hasattr(executor, "terminate_workers"):  # Python >= 3.14
        executor.terminate_workers()
        return
    for process in list(getattr(executor, "_processes", {}).values()):
        process.terminate()
