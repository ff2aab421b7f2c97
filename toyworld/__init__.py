"""The toy world: coloured shapes on a dark background, described by a small caption grammar.

Small enough that a tiny diffusion model learns it on a CPU in minutes, and with a
programmatic notion of "preferred" (prompt fidelity, image quality), so alignment
methods can be seen to *work*, not only to run.

A plugin like any third-party world: installed as the ``harness.plugins`` entry point
``toy``, it imports only ``harness.api`` and registers its base models (``toy``, and ``toy-flow``, its
flow-matching twin), its scorers (``toy-fidelity``, ``toy-quality``), its suites (``toy-seen``,
``toy-unseen``), its presets (``toy``, ``toy-flow``, ``tiny``, ``tiny-flow``) and its judged pairs
(``toy-panel``, for `harness agreement`).
"""

from toyworld import base, judged, presets, scorers, suites  # noqa: F401  (each registers what it defines)
