"""Plugin (``harness --plugin tests/plugins/env_scorer.py ...``) registering ``pixel-mean-env``, a scorer computed in
its own environment, its native twin ``pixel-mean``, and ``broken-env``, whose environment cannot be built
(``harness.testing.env_scorer``)."""

from harness.api import register_scorer
from harness.testing.env_scorer import BrokenEnvScorer, PixelMeanNative, PixelMeanScorer

register_scorer("pixel-mean-env")(PixelMeanScorer)
register_scorer("pixel-mean")(PixelMeanNative)
register_scorer("broken-env")(BrokenEnvScorer)
