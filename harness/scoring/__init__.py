"""Scorers: ``get_scorer(name, **locations)`` builds a registered scorer; ``LazyScorer`` is one whose weights load at
its first batch.

``same_signal(name)`` lists the scorers that measure the same signal as ``name``.
``cache.score_images`` scores a list of images through a ``cache.ScoreCache`` keyed by image content hash,
prompt and scorer version, so unchanged images are never scored twice.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from harness.api.registry import SCORERS
from harness.api.scorer import Scorer
from harness.errors import HarnessError


def get_scorer(name: str, **locations: Any) -> Scorer:
    """Build scorer ``name``; ``locations`` (model / processor / checkpoint) are hub ids or local paths."""
    return SCORERS.get(name)(**locations)


class LazyScorer:
    """Scorer ``name`` with ``locations``: its identity (name, version, scale, family, direction) read from its class
    (``Scorer.version_for``), its weights loaded at the first ``score`` call.  An evaluation whose images are all in
    the score cache (a rerun, a curve's last point) loads no weights."""

    def __init__(self, name: str, **locations: Any) -> None:
        scorer_class = SCORERS.get(name)
        self.name, self.scale, self.family = scorer_class.name, scorer_class.scale, scorer_class.family
        self.higher_is_better = scorer_class.higher_is_better
        self.version = scorer_class.version_for(**locations)
        self.locations = locations
        self._scorer: Scorer | None = None

    def loaded(self) -> Scorer:
        """The scorer itself, built at the first call; refused if its version is not the one announced (the cache
        would file its scores under another scorer's)."""
        if self._scorer is None:
            scorer = get_scorer(self.name, **self.locations)
            if scorer.version != self.version:
                raise HarnessError(
                    f"scorer {self.name}: built with {self.locations or 'its defaults'} its version is {scorer.version}, "
                    f"but its class's version_for gives {self.version}; a scorer whose options choose its weights "
                    "overrides Scorer.version_for"
                )
            self._scorer = scorer
        return self._scorer

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return self.loaded().score(images, prompts)


def same_signal(scorer_name: str) -> list[str]:
    """The registered scorers of ``scorer_name``'s family, sorted (``scorer_name`` included):
    a method trained on any of them has no independent evidence from the others."""
    family = SCORERS.get(scorer_name).family
    return sorted(name for name, cls in SCORERS.items() if cls.family == family)
