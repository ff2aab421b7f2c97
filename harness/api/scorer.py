"""The scorer contract: every metric, real or programmatic, is one of these."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

from PIL import Image

_PREPROCESSING = re.compile(r"\+pre\d+")


def weights_of(version: str) -> str:
    """A scorer version without its preprocessing revision (``+pre<n>``): what a paper's version is compared with."""
    return _PREPROCESSING.sub("", version)


class Scorer(ABC):
    """Scores (image, prompt) pairs.

    ``version`` identifies the weights and formula (a score cache key), ``scale``
    says in words what the number means (e.g. "100*cos", "[0,1]"), so stored scores
    from different versions never share a column.

    ``preprocessing`` is the revision of a re-implementation's preprocessing of the published metric (0: the first),
    raised when a fix changes its numbers: the instance's ``version`` then carries ``+pre<n>`` after the weights'
    name, so no cache or store keyed by version reuses the old numbers, and ``weights_of`` reads the weights' name
    back for comparisons with published versions.

    ``family`` names the signal a scorer measures (by default its own ``name``).  Scorers
    of one family (the same model family trained on the same data) are not independent
    evidence for each other: a method trained on one is marked as trained on all of them.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    scale: ClassVar[str]
    family: ClassVar[str]
    preprocessing: ClassVar[int] = 0
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # A scorer that names itself measures its own signal unless it says which family it
        # shares: sharing is a claim made on purpose, never inherited by accident.
        if "name" in cls.__dict__ and "family" not in cls.__dict__:
            cls.family = cls.name

    @classmethod
    def check_prompt(cls, prompt: str) -> None:
        """Raise a ``HarnessError`` saying why, if this scorer cannot score images of ``prompt`` (a programmatic
        scorer that reads a grammar); runs before anything is made, without the scorer's weights.  Most
        scorers read any text."""

    def embed(self, images: list[Image.Image]) -> list[list[float]]:
        """One embedding vector per image, in a space where a cosine distance says how different two images look:
        what a preset's ``diversity_embedder`` gives (the reward-hacking report's in-prompt diversity).  Scorers
        without an image embedding do not override it."""
        raise NotImplementedError(f"scorer {self.name!r} gives no image embeddings")

    @abstractmethod
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """One float per (image, prompt), on the metric's published scale."""
