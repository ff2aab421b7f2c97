"""What a job of `harness run` cost, as the results store records it per run.

- On a GPU machine, GPU-hours: the job's wall time x the GPUs it used.  Each job uses one GPU
  (a worker process sees only its own, ``harness.workers``; a job run in the parent process
  puts its models on the default device), so that is its wall time.
- On a CPU, CPU-hours: the CPU time of the job's process (user + system, all its threads),
  not wall time x threads.  The cores may be shared with other jobs or other users, and time
  spent waiting for a core is not compute used; on an idle core, with the one thread each job
  runs (``harness.workers``), the two agree.

A run's figures are the sum over its jobs (its training and its evaluation; the base has only
the evaluation), resumed attempts included.  The toy preset's training data, made once in the
parent process and shared by every method, is no run's.
"""

from __future__ import annotations

import time

GPUS_PER_JOB = 1


class JobClock:
    """Started when made; ``figures(stage)`` is the cost since then."""

    def __init__(self, on_gpu: bool | None = None) -> None:
        if on_gpu is None:
            import torch

            on_gpu = torch.cuda.is_available()
        self.on_gpu = on_gpu
        self.wall_started = time.perf_counter()
        self.cpu_started = time.process_time()

    def figures(self, stage: str) -> dict[str, float]:
        """``{"gpu_hours": h, "<stage>_gpu_hours": h}`` on a GPU, ``cpu_hours`` likewise on a CPU."""
        if self.on_gpu:
            key, seconds = "gpu_hours", (time.perf_counter() - self.wall_started) * GPUS_PER_JOB
        else:
            key, seconds = "cpu_hours", time.process_time() - self.cpu_started
        hours = seconds / 3600
        return {key: hours, f"{stage}_{key}": hours}
