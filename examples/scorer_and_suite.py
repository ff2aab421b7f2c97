"""An example plugin: a scorer and a prompt suite, registered from one file.

    harness run --preset toy --plugin examples/scorer_and_suite.py --methods dpo \
        --suites toy-seen,toy-reds --scorers toy-fidelity,redness --out runs/redness
"""

import numpy as np
from PIL import Image

from harness.api import Prompt, Scorer, Suite, register_scorer, register_suite


@register_scorer("redness")
class Redness(Scorer):
    name = "redness"
    version = "1"  # change it whenever the formula changes: scores are cached by (image, prompt, version)
    scale = "[0,1]"
    higher_is_better = True
    description = "share of strongly red pixels (an example scorer; ignores the prompt)"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        scores = []
        for image in images:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            red = (rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.4) & (rgb[..., 2] < 0.4)
            scores.append(float(red.mean()))
        return scores


@register_suite("toy-reds")
def toy_reds() -> Suite:
    shapes, places = ("circle", "square", "triangle"), ("on the left", "in the center", "on the right")
    prompts = [
        Prompt(f"red-{shape}-{i}", f"a red {shape} {place}", category=shape)
        for shape in shapes
        for i, place in enumerate(places)
    ]
    return Suite("toy-reds", split="seen", prompts=tuple(prompts), description="red shapes (an example suite)")
