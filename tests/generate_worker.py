"""The generation job shared by the sampling tests, and a script that runs it in its own
process, alone (the tests kill it mid-run); tests/dist_train_check.py runs it under
``torchrun --nproc_per_node 2`` (gloo).

Usage: generate_worker.py MODEL_DIR OUT_DIR BATCH_SIZE [IMAGES_PER_PROMPT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.api import Prompt, Suite

PROMPTS = [
    "a red square on a blue background",
    "A photo of an astronaut riding a horse, 4k!",
    "bond",
    "a bowl of soup that looks like a monster, knitted out of wool",
    "émigré café — 東京",
]

# DDPM: stochastic steps, so the per-image generators' step noise is exercised too.
SETTINGS = dict(images_per_prompt=2, seed=123, num_inference_steps=4, guidance_scale=7.5, scheduler="ddpm")


def case_suite(n_prompts: int = len(PROMPTS)) -> Suite:
    return Suite(
        "case", "unseen", tuple(Prompt(f"p{i}", text, f"cat{i % 2}") for i, text in enumerate(PROMPTS[:n_prompts]))
    )


def generate_case(model_dir: str, out_dir: Path, batch_size: int, images_per_prompt: int) -> None:
    """The case suite with SETTINGS, in torchrun's process group when there is one (started here or by the
    caller); prints how many manifest rows this process got back."""
    import torch
    import torch.distributed as dist

    from harness.distributed import torchrun_process_group
    from harness.evaluation.sampling import generate
    from harness.models.loading import load_pipeline

    with torchrun_process_group() as device:
        rank = dist.get_rank() if dist.is_initialized() else 0
        rows = generate(
            load_pipeline(model_dir, device=device),
            case_suite(),
            out_dir,
            **{**SETTINGS, "images_per_prompt": images_per_prompt},
            batch_size=batch_size,
            progress=False,
        )
        print(f"rank {rank}: {len(rows)} rows, {torch.get_num_threads()} threads", flush=True)


def main() -> None:
    model_dir, out_dir, batch_size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    images_per_prompt = int(sys.argv[4]) if len(sys.argv) > 4 else SETTINGS["images_per_prompt"]
    generate_case(model_dir, out_dir, batch_size, images_per_prompt)


if __name__ == "__main__":
    main()
