"""Plugin (``harness --plugin tests/plugins/env_scorer.py ...``) registering ``pixel-mean-env``, a scorer computed in
its own environment (``harness.testing.env_scorer``)."""

from harness.api import register_scorer
from harness.testing.env_scorer import PixelMeanScorer

register_scorer("pixel-mean-env")(PixelMeanScorer)
