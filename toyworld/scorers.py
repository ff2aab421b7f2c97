"""The toy world's programmatic rewards as registered scorers: the training signals "toy-fidelity" and "toy-quality",
and the held-out judge "toy-exact" that no toy training data is labelled with."""

from __future__ import annotations

import numpy as np
from PIL import Image

from harness.api import HarnessError, Scorer, register_scorer
from toyworld import rewards
from toyworld.grammar import parse_caption
from toyworld.render import IMAGE_SIZE, from_pil


class _ToyScorer(Scorer):
    scale = "[0,1]"

    def __init__(self, **locations: object) -> None:
        if locations:
            raise HarnessError(
                f"scorer {self.name!r} is programmatic and takes no model locations (got {', '.join(locations)})"
            )

    @staticmethod
    def pixels(image: Image.Image) -> np.ndarray:
        # The rewards are calibrated at the toy world's own resolution.
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
        return from_pil(image)

    def embed(self, images: list[Image.Image]) -> list[list[float]]:
        """What the soft classifiers read in each image (``rewards.reading_features``): two images of one prompt are
        apart where the toy judges see a different colour, shape, position or finish."""
        return [rewards.reading_features(rewards.cached_read(self.pixels(im))).tolist() for im in images]


@register_scorer("toy-fidelity")
class ToyFidelity(_ToyScorer):
    name = "toy-fidelity"
    version = "1"
    description = "toy world: belief that the image shows the caption's colour, shape and position"

    @classmethod
    def check_prompt(cls, prompt: str) -> None:
        parse_caption(prompt)

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return [rewards.fidelity(self.pixels(im), parse_caption(p)) for im, p in zip(images, prompts, strict=True)]


@register_scorer("toy-quality")
class ToyQuality(_ToyScorer):
    name = "toy-quality"
    version = "1"
    description = "toy world: contrast, edge sharpness and clean background, regardless of the caption"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return [rewards.quality(self.pixels(im)) for im, _ in zip(images, prompts, strict=True)]


@register_scorer("toy-exact")
class ToyExact(_ToyScorer):
    name = "toy-exact"
    version = "1"
    scale = "{0,1}"
    description = (
        "toy world, held out: 1 if the picture is exactly the caption's scene (nearest clean rendering of "
        "all 90 scenes), else 0; no toy training signal uses it"
    )

    check_prompt = ToyFidelity.check_prompt  # the same grammar

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return [rewards.exact(self.pixels(im), parse_caption(p)) for im, p in zip(images, prompts, strict=True)]
