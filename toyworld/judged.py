"""The toy world's judged pairs, ``toy-panel``: preference pairs like people's, with a known ground truth.

Each training caption is rendered four times with random flaws (another colour, shape or position, blur, low
contrast, a shifted centre), and every two of its renderings are a pair.  The panel prefers the image of
higher utility, the toy training data's (``presets.TOY_DATA``: 3 x toy-fidelity + 1 x toy-quality), and then
errs: each verdict is flipped with probability ``NOISE_RATE``; near-equal utilities are a tie (skipped, as
people's ties are).  So the chance that the panel prefers each pair's first image is known, and with it the
accuracy any scorer should have (``harness.results.agreement.expected_accuracy``): a judge of the panel's own
utility would score 1 - ``NOISE_RATE``, and `harness agreement --data toy-panel` shows whether each scorer's
confidence interval holds its expected accuracy.  Made in memory, seeded, in about a second.
"""

from __future__ import annotations

import io
from itertools import combinations

import numpy as np
from PIL import Image

from harness.api import HarnessError, JudgedPair, JudgedSet, register_judged_set
from toyworld import rewards
from toyworld.grammar import COLOURS, POSITIONS, SHAPES, seen_scenes
from toyworld.presets import TOY_DATA
from toyworld.render import Degradation, from_pil, render, to_pil

NOISE_RATE = 0.2  # the chance that the panel's verdict is the opposite of its utility's
RENDERINGS = 4  # per caption: 6 pairs each
TIE_MARGIN = 1e-3  # utilities closer than this are a tie
SEED = 2000  # other seeds than the toy data's and evaluation's


def _flaw(rng: np.random.Generator) -> Degradation:
    """A random departure from the caption and from a clean picture (none of each, sometimes)."""
    wrong = rng.integers(4)  # 0: right scene; else the colour, shape or position is another one
    return Degradation(
        colour=str(rng.choice(list(COLOURS))) if wrong == 1 else None,
        shape=str(rng.choice(SHAPES)) if wrong == 2 else None,
        position=str(rng.choice(list(POSITIONS))) if wrong == 3 else None,
        blur_sigma=float(rng.uniform(0.0, 1.5)),
        contrast=float(rng.uniform(0.3, 1.0)),
        jitter=(float(rng.normal(0, 1.0)), float(rng.normal(0, 1.0))),
    )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@register_judged_set("toy-panel")
def toy_panel(location: str | None) -> JudgedSet:
    if location is not None:
        raise HarnessError(f"toy-panel is made, not read: --data toy-panel takes no location (got {location!r})")
    rng = np.random.default_rng(SEED)
    fidelity_weight, quality_weight = TOY_DATA["scorer_weights"]
    pairs, ties = [], 0
    for scene in seen_scenes():
        # Judged as stored (8 bits a channel), as the scorers will see them.
        stored = [to_pil(render(scene, degradation=_flaw(rng))) for _ in range(RENDERINGS)]
        images = [from_pil(image) for image in stored]
        utility = [
            fidelity_weight * rewards.fidelity(image, scene) + quality_weight * rewards.quality(image)
            for image in images
        ]
        encoded = [_png(image) for image in stored]
        for a, b in combinations(range(RENDERINGS), 2):
            if abs(utility[a] - utility[b]) < TIE_MARGIN:
                ties += 1
                continue
            better, worse = (a, b) if utility[a] > utility[b] else (b, a)
            erred = rng.random() < NOISE_RATE
            preferred, other = (worse, better) if erred else (better, worse)
            p_preferred = NOISE_RATE if erred else 1.0 - NOISE_RATE
            pairs.append(JudgedPair(scene.caption, encoded[preferred], encoded[other], p_preferred))
    note = (
        f"a simulated panel: prefers the higher {fidelity_weight:g} x toy-fidelity + {quality_weight:g} x toy-quality, "
        f"each verdict flipped with probability {NOISE_RATE} (a judge of that utility scores {1 - NOISE_RATE:.0%})"
    )
    return JudgedSet("toy-panel", "made in memory", pairs, ties, note)
