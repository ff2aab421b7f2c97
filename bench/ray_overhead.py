"""What a job costs on the Ray backend beyond what it costs on the local pool, side by side.

Two measurements, on this machine's cores (a local Ray instance started here, no dashboard):

- ``empty jobs``: ``--jobs-per-round`` jobs that do nothing, through the local ``WorkerPool``
  (forked workers, one per core) and as Ray tasks (one CPU each).  Start-up (pool / cluster) and
  the time per job once the workers run are reported apart: a job's own cost is nil, so what is
  left is the backend's.
- ``harness run``: the same run (``--preset``, ``--methods``) with ``--backend local`` and
  ``--backend ray``, fresh results directories, one warm ``HARNESS_CACHE`` (a first local run,
  not timed, makes the base model, training data and feature caches).  Wall times side by side,
  their ratio, and the difference per job (a training is one job, a model's evaluation one:
  ``methods + 1 + methods``).

Rounds alternate the backends; medians.  The machine's load average is printed with the results:
on a shared machine, compare ratios from one invocation only.

Usage: ``python bench/ray_overhead.py [--preset toy] [--methods dpo] [--rounds 2] [--jobs-per-round 40]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.workers import WorkerPool, default_processes

HARNESS = Path(sys.executable).with_name("harness")


def nothing(job: int) -> int:
    return job


def empty_jobs_local(n: int) -> tuple[float, float]:
    """(seconds to start the pool and its workers, seconds per job) for ``n`` empty jobs on the local pool.

    As in `harness run`, the workers fork after the job libraries are imported here (not timed)."""
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    started = time.perf_counter()
    with WorkerPool(default_processes(n)) as pool:
        pool.results([pool.submit(nothing, job) for job in range(default_processes(n))])  # the workers started
        ready = time.perf_counter()
        pool.results([pool.submit(nothing, job) for job in range(n)])
        done = time.perf_counter()
    return ready - started, (done - ready) / n


def empty_jobs_ray(n: int) -> tuple[float, float]:
    """(seconds to start the cluster and its workers, seconds per job) for ``n`` empty Ray tasks."""
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=default_processes(n), include_dashboard=False, logging_level="ERROR")
    task = ray.remote(num_cpus=1)(nothing)
    ray.get([task.remote(job) for job in range(default_processes(n))])  # the workers started
    ready = time.perf_counter()
    ray.get([task.remote(job) for job in range(n)])
    done = time.perf_counter()
    ray.shutdown()
    return ready - started, (done - ready) / n


def harness_run(backend: str, args: argparse.Namespace, cache: Path, out: Path) -> float:
    """Wall seconds of one `harness run` on ``backend``."""
    command = [
        str(HARNESS),
        "run",
        "--preset",
        args.preset,
        "--methods",
        args.methods,
        "--backend",
        backend,
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HARNESS_CACHE": str(cache)})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--methods", default="dpo")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs-per-round", type=int, default=40)
    args = parser.parse_args()

    empty: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
    for _ in range(args.rounds):
        empty["local"].append(empty_jobs_local(args.jobs_per_round))
        empty["ray"].append(empty_jobs_ray(args.jobs_per_round))
    print(
        f"empty jobs ({args.jobs_per_round} a round, {default_processes(args.jobs_per_round)} workers, "
        f"median of {args.rounds} rounds):"
    )
    for backend, rounds in empty.items():
        start = statistics.median(r[0] for r in rounds)
        per_job = statistics.median(r[1] for r in rounds)
        print(f"  {backend:5s}  start-up {start:6.2f} s   per job {per_job * 1000:7.2f} ms")

    n_methods = len(args.methods.split(","))
    n_jobs = 2 * n_methods + 1
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as root:
        cache = Path(root) / "cache"
        harness_run("local", args, cache, Path(root) / "warm-up")  # base model, training data, features
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        for round_ in range(args.rounds):
            for backend in ("local", "ray") if round_ % 2 == 0 else ("ray", "local"):
                out = Path(root) / f"{backend}-{round_}"
                walls[backend].append(harness_run(backend, args, cache, out))
                shutil.rmtree(out)
    local, ray_ = statistics.median(walls["local"]), statistics.median(walls["ray"])
    print(f"harness run --preset {args.preset} --methods {args.methods} ({n_jobs} jobs, median of {args.rounds}):")
    print(
        f"  local {local:7.1f} s   ray {ray_:7.1f} s   ray/local {ray_ / local:.2f}x   "
        f"per job {(ray_ - local) / n_jobs:+.1f} s"
    )
    print(
        f"  each round: local {', '.join(f'{w:.1f}' for w in walls['local'])} s; "
        f"ray {', '.join(f'{w:.1f}' for w in walls['ray'])} s"
    )
    print(f"load average while measured: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
