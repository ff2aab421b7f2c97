"""Scoring speed per scorer: images/s one at a time (the baseline) against batched and cached.

Weights are random (none can be downloaded here) but written in the official file layouts and
loaded through the scorers' real code path.  ``--size tiny`` (default) runs on a CPU in a
minute; ``--size real`` builds the published architectures (ViT-H/14, ViT-L/14, BLIP ViT-L +
BERT-base) and is meant for a GPU.  All variants run side by side in one process, interleaved,
and the medians over ``--repeats`` rounds are reported.

    python bench/score.py                                  # tiny models, CPU
    python bench/score.py --size real --device cuda --images 64 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.api.scorer import Scorer
from harness.scoring import get_scorer
from harness.scoring.cache import ScoreCache, score_images
from harness.testing.scorer_weights import (
    CLIP_SHAPES,
    register_tiny_open_clip,
    save_aesthetic_head,
    save_hf_clip,
    save_imagereward,
    save_open_clip,
)

SCORERS = ("pickscore", "hpsv2", "hpsv2.1", "clip", "aesthetic", "imagereward")
OPEN_CLIP_FILES = {
    "hpsv2": ("HPS_v2_compressed.pt", True),
    "hpsv2.1": ("HPS_v2.1_compressed.pt", True),
    "clip": ("open_clip_pytorch_model.bin", False),
}


def build(name: str, size: str, root: Path, device: str) -> Scorer:
    """Write random weights for ``name`` in its official layout under ``root`` and load them."""
    where = root / name
    where.mkdir(parents=True)
    if name == "pickscore":
        model, processor = save_hf_clip(where, "tiny" if size == "tiny" else "ViT-H-14")
        return get_scorer(name, model=str(model), processor=str(processor), device=device)
    if name == "aesthetic":
        shape = "tiny" if size == "tiny" else "ViT-L-14"
        model, processor = save_hf_clip(where, shape)
        head = save_aesthetic_head(where / "head.pth", CLIP_SHAPES[shape].projection)
        return get_scorer(name, model=str(model), processor=str(processor), checkpoint=str(head), device=device)
    if name in OPEN_CLIP_FILES:
        arch = register_tiny_open_clip(root / "open_clip_configs") if size == "tiny" else "ViT-H-14"
        filename, wrapped = OPEN_CLIP_FILES[name]
        save_open_clip(where / filename, arch, training_checkpoint=wrapped)
        return get_scorer(name, checkpoint=str(where), arch=arch, device=device)
    if name == "imagereward":
        save_imagereward(where, "tiny" if size == "tiny" else "large")
        return get_scorer(name, checkpoint=str(where), tokenizer=str(where / "tokenizer"), device=device)
    raise SystemExit(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")


def images_per_second(run, n_images: int) -> float:
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - start)


def bench(
    scorer: Scorer, images: list[Image.Image], prompts: list[str], batch: int, repeats: int, cache: ScoreCache
) -> dict:
    keys = [f"bench-{i}" for i in range(len(images))]
    score_images(scorer, images, prompts, keys, cache, batch)  # warm-up, and fills the cache
    variants = {
        "one at a time": lambda: score_images(scorer, images, prompts, keys, None, 1),
        f"batch {batch}": lambda: score_images(scorer, images, prompts, keys, None, batch),
        "cached": lambda: score_images(scorer, images, prompts, keys, cache, batch),
    }
    rates: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeats):  # interleaved, so drift in machine load hits every variant alike
        for label, run in variants.items():
            rates[label].append(images_per_second(run, len(images)))
    return {label: statistics.median(values) for label, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scorers", default=",".join(SCORERS))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=512, help="side of the test images (SD1.5 makes 512)")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (args.resolution, args.resolution, 3), dtype=np.uint8))
        for _ in range(args.images)
    ]
    prompts = [f"a photo of object number {i} on a wooden table, highly detailed" for i in range(args.images)]
    print(
        f"# {args.images} images {args.resolution}px, {args.size} weights, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, medians of {args.repeats}"
    )
    print(
        f"{'scorer':<12} {'load s':>7} {'1-by-1 img/s':>13} {'batch img/s':>12} {'x vs 1-by-1':>11} {'cached img/s':>13}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scorers.split(","):
            start = time.perf_counter()
            scorer = build(name, args.size, Path(tmp), args.device)
            load_s = time.perf_counter() - start
            with ScoreCache(Path(tmp) / f"{name}.db") as cache:
                rates = bench(scorer, images, prompts, args.batch, args.repeats, cache)
            single, batched, cached = rates.values()
            print(
                f"{name:<12} {load_s:>7.1f} {single:>13.3g} {batched:>12.3g} {batched / single:>11.2f} {cached:>13.3g}"
            )
            del scorer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
