"""Training several models at once in worker processes vs one after another in this process.

`harness run` trains each method as one job of a ``harness.workers.WorkerPool``: on a CPU,
one worker process per core, one thread each.  This compares, on the toy base UNet with the
toy preset's batch (16 pairs), three ways of training ``--models`` models for ``--steps``
steps each:

- ``sequential``: one model after another in this process, with all of torch's threads (what
  `harness run` did before it had workers);
- ``one worker per model``: all models at once, sharing the cores when there are more models
  than cores (what `harness run` did before it queued its jobs);
- ``one worker per core``: the models queued on as many workers as cores (what it does now).

Both worker variants give each worker one thread, and their times include starting the
workers (forked on Linux, spawned elsewhere, see ``harness.workers``).  Use a multiple of the
core count for ``--models`` (e.g. 4 on 2 cores) so that queued workers get equal shares.

A step is the unavoidable compute of a DPO step: policy forward + backward and reference
forward on 2 x 16 latents, then AdamW.  Rounds alternate the variants; medians and ratios.

Usage: ``python bench/parallel_models.py [--models 4] [--steps 300] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.workers import default_processes, run_jobs

PAIRS = 16


def train_steps(steps: int) -> float:
    """``steps`` DPO-shaped optimizer steps of the toy base UNet; returns their wall time."""
    import copy

    from harness.models.loading import load_pipeline
    from toyworld.base import ensure_base_model

    pipe = load_pipeline(ensure_base_model())
    unet = pipe.unet
    reference = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6, fused=True)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2 * PAIRS, 77, pipe.text_encoder.config.hidden_size, generator=generator)
    latents = torch.randn(2 * PAIRS, 4, 8, 8, generator=generator)
    started = time.perf_counter()
    for _ in range(steps):
        t = torch.randint(0, 1000, (2 * PAIRS,), generator=generator)
        prediction = unet(latents, t, encoder_hidden_states=hidden).sample
        with torch.no_grad():
            target = reference(latents, t, encoder_hidden_states=hidden).sample
        ((prediction - target) ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    train_steps(2)  # builds the toy base pipeline in the cache once, outside the timings
    jobs = [args.steps] * args.models
    cores = default_processes(args.models)
    variants = {
        f"sequential (this process, {torch.get_num_threads()} threads)": lambda: [train_steps(steps) for steps in jobs],
        f"one worker per model ({args.models} processes)": lambda: run_jobs(train_steps, jobs, processes=args.models),
        f"one worker per core ({cores} processes)": lambda: run_jobs(train_steps, jobs, processes=cores),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            started = time.perf_counter()
            variant()
            times[name].append(time.perf_counter() - started)
    print(f"{args.models} models x {args.steps} steps on {cores} cores")
    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline = next(iter(medians.values()))
    for name, values in times.items():
        print(
            f"{name:45s} {medians[name]:6.1f} s  ({medians[name] / baseline:.2f}x sequential)  rounds "
            f"{[round(value, 1) for value in values]}"
        )


if __name__ == "__main__":
    main()
