"""Alignment in the toy world learns from the labels: DPO on flipped preferences ends below the base, and below
the same training on the correct labels.

A small version of ``python -m toyworld.flip_check`` (the issue's sanity test): the toy preset's DPO on the pairs
of a third of the training captions, once as labelled and once with every label inverted.  If the flipped run did
not lose fidelity, the loss would not be learning from the labels (a sign error, or a model that only fits the
images).  To fit the suite, each training is 100 steps at 3x the recipe's lr instead of 300 (docs/testing.md has
the measured deltas of both settings); the correct run guards against that lr losing fidelity whatever the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.results.stats import bootstrap_mean_ci
from toyworld.flip_check import flip_pairs
from toyworld.grammar import training_captions
from toyworld.presets import TOY_DATA, TOY_GENERATION

CAPTIONS = training_captions()[::3]  # 24 captions: every colour, shape and position
IMAGES_PER_PROMPT = 4
SHORTENED = {"max_steps": 100, "lr": 9e-5}  # the recipe: 300 steps at 3e-5


def fidelity_of(model_dir: Path, unet: Path | None, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """toy-fidelity of IMAGES_PER_PROMPT evaluation images per caption, and each image's prompt id."""
    from harness.api import Prompt, Suite
    from harness.evaluation.sampling import generate
    from harness.models.loading import load_pipeline
    from harness.scoring import get_scorer
    from harness.scoring.cache import score_images

    suite = Suite("flip-probe", "seen", tuple(Prompt(f"p{i:02d}", c) for i, c in enumerate(CAPTIONS)))
    settings = {
        k: getattr(TOY_GENERATION, k) for k in ("num_inference_steps", "guidance_scale", "scheduler", "batch_size")
    }
    rows = generate(
        load_pipeline(model_dir, unet=unet),
        suite,
        out,
        images_per_prompt=IMAGES_PER_PROMPT,
        seed=0,
        progress=False,
        **settings,
    )
    values = score_images(get_scorer("toy-fidelity"), [out / r["path"] for r in rows], [r["prompt"] for r in rows])
    return np.asarray(values), np.asarray([r["prompt_id"] for r in rows])


@pytest.mark.slow
def test_dpo_on_flipped_labels_ends_below_the_base_and_the_correct_labels(harness_cache, tmp_path) -> None:
    from harness.data.synthesis import synthesize
    from harness.train.trainer import train
    from toyworld.base import ensure_base_model

    base = ensure_base_model(harness_cache)
    data = synthesize(base, CAPTIONS, tmp_path / "data", **TOY_DATA)
    base_fid, prompts = fidelity_of(base, None, tmp_path / "eval-base")
    fidelity = {}
    for labels, pairs in (("correct", data), ("flipped", flip_pairs(data, tmp_path / "flipped-data"))):
        out = tmp_path / f"dpo-{labels}"
        result = train("dpo", base_model=base, data_dir=pairs, output_dir=out, preset="toy", overrides=SHORTENED)
        fidelity[labels], same_prompts = fidelity_of(base, result.unet_dir, tmp_path / f"eval-{labels}")
        assert (same_prompts == prompts).all()
    # Paired 95% CIs over prompts: the flipped run's change from the base, and its gap to the correct run.
    for delta in (fidelity["flipped"] - base_fid, fidelity["flipped"] - fidelity["correct"]):
        low, high = bootstrap_mean_ci(delta, prompts)
        assert high < 0, (delta.mean(), low, high)
