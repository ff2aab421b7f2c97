"""Plugin (``harness --plugin tests/plugins/tiny_scorer_archs.py ...``) registering the tiny OpenCLIP
architecture of ``harness.testing.scorer_weights.save_scorer_set`` in the process that loads it.

The harness loads plugins in its own process and again in every spawned worker, so all of them
can build the hpsv2, hpsv2.1 and clip scorers from the tiny weights (``arch="tiny-test-ViT"``).
The architecture's JSON file goes to ``$HARNESS_CACHE/open-clip-configs``.
"""

from harness.testing.scorer_weights import register_tiny_open_clip

register_tiny_open_clip()
