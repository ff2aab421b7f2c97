"""The scorer contract: every metric, real or programmatic, is one of these."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from PIL import Image

_PREPROCESSING = re.compile(r"\+pre\d+")


def weights_of(version: str) -> str:
    """A scorer version without its preprocessing revision (``+pre<n>``): what a paper's version is compared with."""
    return _PREPROCESSING.sub("", version)


def weights_version(
    version: str, given: Mapping[str, Any], defaults: Mapping[str, Any], *, preprocessing: int = 0
) -> str:
    """``version`` for the official weights; a distinct version for any other location, and for each revision
    of our preprocessing after the first (``+pre<n>``, see ``Scorer.preprocessing``).

    Cached and stored scores are keyed by version, so scores of a user's own (or a tiny test)
    model must never share a key with the published metric.
    """
    if preprocessing:
        version = f"{version}+pre{preprocessing}"
    custom = {key: str(value) for key, value in given.items() if str(value) != str(defaults.get(key))}
    if not custom:
        return version
    digest = hashlib.sha256(repr(sorted(custom.items())).encode()).hexdigest()[:10]
    return f"{version}+custom-{digest}"


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
    def version_for(cls, **options: Any) -> str:
        """The ``version`` of ``cls(**options)``, known without building it: a run looks its images up in the score
        cache (keyed by version) before any weights load, and loads none when every score is cached.  This
        default is the class's ``version`` (with ``preprocessing``'s revision); a scorer whose options choose its
        weights overrides it (``weights_version``), and its ``__init__`` sets ``self.version`` from it."""
        return weights_version(cls.version, {}, {}, preprocessing=cls.preprocessing)

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
