"""Training several models at once in worker processes vs one after another in this process.

`harness run` trains, samples and scores each model as one job of ``harness.workers.run_jobs``:
on a CPU, one worker process per model, one thread each.  This compares, on the toy base
UNet with the toy preset's batch (16 pairs), the two ways of training ``--models`` models for
``--steps`` steps each:

- ``sequential``: one model after another in this process, with all of torch's threads (what
  `harness run` did before it had workers);
- ``workers``: ``run_jobs`` with one worker per model, one thread each (starting the workers
  included: forked on Linux, spawned elsewhere, see ``harness.workers``).

A step is the unavoidable compute of a DPO step: policy forward + backward and reference
forward on 2 x 16 latents, then AdamW.  Rounds alternate the two; medians and their ratio.

Usage: ``python bench/parallel_models.py [--models 3] [--steps 300] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.workers import run_jobs  # noqa: E402

PAIRS = 16


def train_steps(steps: int) -> float:
    """``steps`` DPO-shaped optimizer steps of the toy base UNet; returns their wall time."""
    import copy

    from harness.models import load_pipeline
    from harness.toyworld.base import ensure_base_model

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
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    train_steps(2)  # builds the toy base pipeline in the cache once, outside the timings
    sequential, workers = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for _ in range(args.models):
            train_steps(args.steps)
        sequential.append(time.perf_counter() - started)
        started = time.perf_counter()
        run_jobs(train_steps, [args.steps] * args.models, processes=args.models)
        workers.append(time.perf_counter() - started)
    s, w = statistics.median(sequential), statistics.median(workers)
    print(f"{args.models} models x {args.steps} steps, {torch.get_num_threads()} threads here")
    print(f"sequential (this process, {torch.get_num_threads()} threads): {s:.1f} s  rounds {[round(x, 1) for x in sequential]}")
    print(f"workers ({args.models} processes, 1 thread each):   {w:.1f} s  rounds {[round(x, 1) for x in workers]}")
    print(f"workers / sequential: {w / s:.2f}")


if __name__ == "__main__":
    main()
