"""Offline stand-ins the tests, the ``tiny`` / ``tiny-flow`` presets and the toy world build on, kept out of the
shipped modules: tiny SD1.5 / SDXL / SD3-shaped pipelines (``tiny_models``, which registers the ``tiny`` and
``tiny-sd3`` base models) and random-weight scorer files in the official layouts (``scorer_weights``)."""
