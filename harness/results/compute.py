"""What a job of `harness run` cost, as the results store records it per run.

- On a GPU machine, GPU-hours: the job's wall time x the GPUs it used.  A job uses one GPU
  (a worker process sees only its own, ``harness.workers``; a job run in the parent process
  puts its models on the default device), a training of N processes (``--train-processes``) N.
- On a CPU, CPU-hours: the CPU time of the job's process and of the processes it started and
  waited for (a training's N processes; user + system, all their threads), not wall time x threads.  The cores may be shared with other jobs or other users, and time
  spent waiting for a core is not compute used; on an idle core, with the one thread each job
  runs (``harness.workers``), the two agree.
- Wall time: the job's, from its start to its end.
- Peak memory (MiB): on a GPU, the most memory torch allocated on it during the job
  (``torch.cuda.max_memory_allocated``); on a CPU, the job process's peak resident set
  (``getrusage``'s ``ru_maxrss``).  A worker process runs job after job, so on Linux the
  process's peak is reset when a job starts (``/proc/self/clear_refs``); where that is not
  possible the figure is the process's peak since it started, which may include an earlier job's.

A run's figures are the sum over its jobs (its training and its evaluation; the base has only
the evaluation), resumed attempts included, except peak memory, which is the largest of its
jobs' (``combine``), and a training's process count (``train_processes``), the largest of its attempts'.  Each figure is also kept per stage (``train_wall_s``, ``eval_cpu_hours``...).
The toy preset's training data, made once in the parent process and shared by every method, is
no run's.
"""

from __future__ import annotations

import resource
import sys
import time

GPUS_PER_JOB = 1
PEAK_MEMORY = "peak_memory_mb"  # figures named so (``train_peak_memory_mb`` too) combine by their maximum
PROCESSES = "train_processes"  # a training's data-parallel processes: combined by the maximum too


class JobClock:
    """Started when made; ``figures(stage)`` is the cost since then."""

    def __init__(self, on_gpu: bool | None = None, processes: int = 1) -> None:
        """``processes``: the job's processes, each on its own GPU on a GPU machine (a training's)."""
        if on_gpu is None:
            import torch

            on_gpu = torch.cuda.is_available()
        self.on_gpu = on_gpu
        self.processes = processes
        _reset_peak_memory(on_gpu)
        self.wall_started = time.perf_counter()
        self.cpu_started = _cpu_seconds()

    def figures(self, stage: str) -> dict[str, float]:
        """The job's ``wall_s``, ``gpu_hours`` on a GPU or ``cpu_hours`` on a CPU and ``peak_memory_mb``
        (where measured; this process's), each also as ``<stage>_<name>`` (e.g. ``train_cpu_hours``); a
        training's also ``train_processes``."""
        wall = time.perf_counter() - self.wall_started
        if self.on_gpu:
            hours_key, seconds = "gpu_hours", wall * GPUS_PER_JOB * self.processes
        else:
            hours_key, seconds = "cpu_hours", _cpu_seconds() - self.cpu_started
        measured = {"wall_s": wall, hours_key: seconds / 3600, PEAK_MEMORY: _peak_memory_mb(self.on_gpu)}
        figures: dict[str, float] = {}
        for name, value in measured.items():
            if value is not None:
                figures[name] = figures[f"{stage}_{name}"] = value
        if stage == "train":
            figures[PROCESSES] = self.processes
        return figures


def combine(recorded: dict[str, float], figures: dict[str, float]) -> dict[str, float]:
    """A run's figures with one more job's ``figures``: sums, and the larger peak memory."""
    combined = dict(recorded)
    for key, value in figures.items():
        if key.endswith(PEAK_MEMORY) or key == PROCESSES:
            combined[key] = max(combined.get(key, 0), value)
        else:
            combined[key] = combined.get(key, 0) + value
    return combined


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that ended and were waited for (with theirs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _reset_peak_memory(on_gpu: bool) -> None:
    if on_gpu:
        if _cuda_available():
            import torch

            torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the process's peak resident set, which getrusage reports
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # elsewhere: the process's peak since it started (see the module's doc)


def _peak_memory_mb(on_gpu: bool) -> float | None:
    """None where it cannot be measured (a clock told it is on a GPU that CUDA does not see)."""
    if on_gpu:
        if not _cuda_available():
            return None
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
