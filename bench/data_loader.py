"""The training loader's throughput and memory on a synthetic Pick-a-Pic v2 split (docs/scaling.md).

What the trainer does per pair before its step (``Trainer.make_batch``): read the row, decode both JPEGs, resize,
crop, flip, VAE-encode each image, encode the caption (``harness.train.features.FeatureEncoder``).  Measured on
the split that ``harness.testing.pickapic.write_pickapic`` writes (``--pairs`` rows, ``--image-size`` px JPEGs,
1 in 10 a tie) with the tiny pipeline (``--resolution`` px, 4 x 4 x 4 latents at 32):

- ``index``: the time and resident memory of opening the split as the trainer does (``data_specs.examples``);
- ``uncached``: pairs/s with ``cache_features`` off (every image decoded and encoded at each use);
- ``cached``: pairs/s reading a warm feature cache (float16 posteriors, fp32 text), a fresh encoder each round
  so every entry comes from the disk, not the in-RAM LRU.

Each round visits ``--measured`` pairs drawn at random from the whole split; medians over ``--rounds``, and
the peak resident memory of the process (``ru_maxrss``, torch and the pipeline included).

Usage: ``python bench/data_loader.py [--pairs 100000] [--measured 500] [--rounds 3]``
(the split is written once under ``$HARNESS_CACHE/bench/``; on a shared CPU, ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.api import Pairs
from harness.api.environment import cache_dir
from harness.data import specs as data_specs
from harness.data.readers import ImageLoader
from harness.models.loading import load_pipeline
from harness.plan.locations import resolve_base_model
from harness.testing.pickapic import write_pickapic
from harness.train.features import FeatureEncoder


def rss_mib() -> float:
    """The process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def visit(encoder: FeatureEncoder, examples, rows: np.ndarray, flips: np.ndarray) -> float:
    """Pairs per second of encoding ``rows`` (both images, flipped where ``flips`` says, and the caption)."""
    start = time.perf_counter()
    for row, flip in zip(rows.tolist(), flips.tolist()):
        example = examples[row]
        encoder.latents(list(example.images), flip)
        encoder.cond([example.caption])
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--measured", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    split = cache_dir() / "bench" / f"pickapic-{args.pairs}-{args.image_size}px"
    if not (split / "data").is_dir():
        start = time.perf_counter()
        write_pickapic(split, args.pairs, image_size=args.image_size)
        print(f"wrote {args.pairs:,} pairs to {split} in {time.perf_counter() - start:.0f} s")
    parquet_mib = sum(f.stat().st_size for f in (split / "data").glob("*.parquet")) / 2**20

    pipe = load_pipeline(resolve_base_model("tiny"))
    before = rss_mib()
    start = time.perf_counter()
    examples = data_specs.examples(Pairs(), str(split))
    index_s = time.perf_counter() - start
    index_mib = rss_mib() - before

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as features:

        def encoder(cached: bool) -> FeatureEncoder:
            return FeatureEncoder(
                pipe,
                device=torch.device("cpu"),
                resolution=args.resolution,
                cache_dir=Path(features) if cached else None,
                loader=ImageLoader(),
            )

        uncached, cached = [], []
        for _ in range(args.rounds):
            rows = rng.choice(len(examples), args.measured, replace=False)
            flips = rng.random((args.measured, 2)) < 0.5
            uncached.append(visit(encoder(False), examples, rows, flips))
            visit(encoder(True), examples, rows, flips)  # warms the cache with these rows
            cached.append(visit(encoder(True), examples, rows, flips))
        entries = list(Path(features).rglob("*.safetensors"))
        latent_bytes = [f.stat().st_size for f in entries if "posteriors" in f.parts]
    result = {
        "pairs_in_split": len(examples),
        "parquet_MiB": round(parquet_mib, 1),
        "index_s": round(index_s, 2),
        "index_rss_MiB": round(index_mib, 1),
        "uncached_pairs_per_s": round(statistics.median(uncached), 1),
        "cached_pairs_per_s": round(statistics.median(cached), 1),
        "cached_over_uncached": round(statistics.median(cached) / statistics.median(uncached), 2),
        "latent_entry_bytes": round(statistics.median(latent_bytes)),
        "peak_rss_MiB": round(peak_rss_mib(), 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
