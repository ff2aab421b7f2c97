"""The contract between the harness and its plugins: methods, scorers, prompt suites, worlds.

A plugin (a file in ``methods/``, a world such as the toy one, a user's ``--plugin`` file)
imports only this package.  What it may rely on:

- registries and their decorators: ``register_method``, ``register_scorer``,
  ``register_suite``, ``register_preset``, ``register_base_model``, ``register_judged_set`` (``METHODS``, ...);
- human-judged pairs (`harness agreement`): ``JudgedPair``, ``JudgedSet``;
- methods: ``Method``, ``TrainConfig``, ``PublishedWeights``, ``Batch``, ``Cond``, ``Models`` (the networks a loss
  calls), ``TrainingContext``, the data specs ``Pairs``, ``Experts``, ``LabelledImages``,
  ``PromptsOnly``, ``Online`` (with ``Rollout``, ``guided_velocity``, ``sde_step``), the loss helpers
  ``per_sample_error``, ``randn_like``, and the forward processes a
  loss reaches through ``Models.process``: ``NoiseProcess`` (``EpsilonDiffusion``, ``FlowMatching``);
- scorers: ``Scorer``, and for a scorer that runs in its own environment ``EnvironmentScorer`` with its
  ``ScorerEnvironment`` (pinned requirements, entry); suites: ``Prompt``, ``Suite`` and the loader helpers;
- presets: ``Preset``, ``GenerationSettings``;
- ``HarnessError`` for one-line user-facing errors; ``cache_dir()``, the harness's cache root;
- for worlds that build their own base model or drive runs: ``TinyPipelineConfig``,
  ``build_tiny_pipeline`` (an SD-shaped pipeline from a config), ``save_pipeline`` (saved as the hub's), the atomic writers
  ``publishing`` / ``replacing``, and ``RunOptions`` / ``run`` (`harness run` as a function).

Everything else in ``harness`` is its implementation, free to change.
"""

import importlib

# Each name's module, imported on first use (PEP 562): ``harness.api.registry`` or ``environment`` alone, as the core
# imports them, stays free of torch.  The last four are the harness's own entry points offered to worlds.
_EXPORTS = {
    **dict.fromkeys(["cache_dir"], "harness.api.environment"),
    **dict.fromkeys(
        [
            "DataSpec",
            "Example",
            "Experts",
            "ImageSource",
            "JudgedPair",
            "JudgedSet",
            "LabelledImages",
            "Online",
            "Pairs",
            "PromptsOnly",
            "reward_weights",
        ],
        "harness.api.data",
    ),
    **dict.fromkeys(
        [
            "Batch",
            "Cond",
            "Method",
            "Models",
            "PublishedWeights",
            "Rollout",
            "TrainConfig",
            "TrainingContext",
            "guided_velocity",
            "per_sample_error",
            "randn_like",
        ],
        "harness.api.method",
    ),
    **dict.fromkeys(["EpsilonDiffusion", "FlowMatching", "NoiseProcess", "sde_step"], "harness.api.noise"),
    **dict.fromkeys(["GenerationSettings", "Preset"], "harness.api.preset"),
    **dict.fromkeys(
        [
            "BASE_MODELS",
            "JUDGED_SETS",
            "METHODS",
            "PRESETS",
            "SCORERS",
            "SUITES",
            "Registry",
            "UnknownEntryError",
            "register_base_model",
            "register_judged_set",
            "register_method",
            "register_preset",
            "register_scorer",
            "register_suite",
        ],
        "harness.api.registry",
    ),
    **dict.fromkeys(["Scorer"], "harness.api.scorer"),
    **dict.fromkeys(["EnvironmentScorer", "ScorerEnvironment"], "harness.scoring.environments"),
    **dict.fromkeys(
        ["Prompt", "Suite", "cached_prompts", "read_prompts_jsonl", "read_text_lines"], "harness.api.suite"
    ),
    **dict.fromkeys(["publishing", "replacing"], "harness.atomic"),
    **dict.fromkeys(["HarnessError"], "harness.errors"),
    **dict.fromkeys(["TinyPipelineConfig", "build_tiny_pipeline", "save_pipeline"], "harness.testing.tiny_models"),
    **dict.fromkeys(["RunOptions"], "harness.plan.planner"),
    **dict.fromkeys(["run"], "harness.run"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness.api' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
