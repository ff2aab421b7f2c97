"""Independent jobs side by side in worker processes: one thread each on a CPU, one GPU each.

`harness run` trains, samples and scores each model (the base and every method) as
one job; the jobs share nothing but the results directory, so they can run at once.

On a CPU every job runs with one thread, in a worker process or not:
- the toy models' ops are too small for two threads to share well (a toy DPO step:
  132 ms with 2 threads; two 1-thread processes side by side take 184 ms each, 1.4x
  the throughput; ``bench/parallel_models.py``: 3 models x 300 steps in 0.81x the time
  of one after another with 2 threads, spawning the workers included);
- CPU kernels split their reductions by thread count, so with one thread a
  model's numbers depend neither on ``--jobs`` nor on the machine's core count.
On GPUs, worker k sees only GPU k (modulo the visible ones); threads are left alone.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_processes(n_jobs: int) -> int:
    """One worker per GPU on a GPU machine; on a CPU one per job, even beyond the core count.

    Measured, toy run with 4 models on 2 cores: 4 workers 156 s, 3 workers 164 s, 2 workers 196 s
    (one thread each), all 4 models in this process with 2 threads 206 s.  Over-subscribing the
    cores costs little, and the jobs' lengths differ (the base only samples), so fewer workers
    leave cores idle at the end.
    """
    return max(1, min(n_jobs, _gpu_count() or n_jobs))


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


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-load bars and notices are noise."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def _init_worker(slots: Any, gpus: int, plugins: list[str]) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, by terminating the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slot = slots.get()
    if gpus:  # before anything initialises CUDA in this process
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[slot % len(visible)]
    os.environ["TQDM_POSITION"] = str(slot)  # each worker's progress bars on their own line
    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a terminated worker would leave for
    # the resource tracker to report as leaked; bars of one process need only a thread lock.
    tqdm.set_lock(threading.RLock())
    from harness.registry import load_plugin

    for plugin in plugins:
        load_plugin(plugin)
    quiet_libraries()
    if not gpus:
        import torch

        torch.set_num_threads(1)


def run_jobs(fn: Callable[[Job], Result], jobs: Sequence[Job], processes: int) -> list[Result]:
    """``[fn(job) for job in jobs]``, on ``processes`` workers; the first failure stops them all.

    ``fn`` must be a module-level function and the jobs picklable (workers are spawned, so
    CUDA and OpenMP start clean in each).  With one process the jobs run here, in order.
    """
    gpus = _gpu_count()
    if processes <= 1 or len(jobs) <= 1:
        with one_cpu_thread(on_gpu=gpus > 0):
            return [fn(job) for job in jobs]
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from harness.registry import loaded_plugins

    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(processes):
        slots.put(slot)
    # A worker that dies (killed, out of memory) fails its job with BrokenProcessPool instead of hanging.
    executor = ProcessPoolExecutor(processes, mp_context=context, initializer=_init_worker,
                                   initargs=(slots, gpus, loaded_plugins()))
    try:
        futures = [executor.submit(fn, job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise future.exception()
        return [future.result() for future in futures]
    except BaseException:
        _stop_workers(executor)  # the other jobs stop too; a rerun resumes them from their checkpoints
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _stop_workers(executor: Any) -> None:
    if hasattr(executor, "terminate_workers"):  # Python >= 3.14
        executor.terminate_workers()
        return
    for process in list(getattr(executor, "_processes", {}).values()):
        process.terminate()
