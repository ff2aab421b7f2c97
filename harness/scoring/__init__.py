"""Scorers: ``get_scorer(name, **locations)`` builds a registered scorer.

``same_signal(name)`` lists the scorers that measure the same signal as ``name``.
``cache.score_images`` scores a list of images through a ``cache.ScoreCache`` keyed by image content hash,
prompt and scorer version, so unchanged images are never scored twice.
"""

from __future__ import annotations

from typing import Any

from harness.api.registry import SCORERS
from harness.api.scorer import Scorer


def get_scorer(name: str, **locations: Any) -> Scorer:
    """Build scorer ``name``; ``locations`` (model / processor / checkpoint) are hub ids or local paths."""
    return SCORERS.get(name)(**locations)


def same_signal(scorer_name: str) -> list[str]:
    """The registered scorers of ``scorer_name``'s family, sorted (``scorer_name`` included):
    a method trained on any of them has no independent evidence from the others."""
    family = SCORERS.get(scorer_name).family
    return sorted(name for name, cls in SCORERS.items() if cls.family == family)
