"""The contract between the harness and its plugins: methods, scorers, prompt suites, worlds.

A plugin (a file in ``methods/``, a world such as the toy one, a user's ``--plugin`` file)
imports only this package.  What it may rely on:

- registries and their decorators: ``register_method``, ``register_scorer``,
  ``register_suite``, ``register_preset``, ``register_base_model`` (``METHODS``, ...);
- methods: ``Method``, ``TrainConfig``, ``PublishedWeights``, ``Batch``, ``Cond``, ``Models`` (the networks a loss
  calls), ``TrainingContext``, the data specs ``Pairs``, ``Experts``, ``LabelledImages``,
  ``PromptsOnly``, the loss helpers ``per_sample_error``, ``randn_like``, and the forward processes a
  loss reaches through ``Models.process``: ``NoiseProcess`` (``EpsilonDiffusion``, ``FlowMatching``);
- scorers: ``Scorer``; suites: ``Prompt``, ``Suite`` and the loader helpers;
- presets: ``Preset``, ``GenerationSettings``;
- ``HarnessError`` for one-line user-facing errors; ``cache_dir()``, the harness's cache root;
- for worlds that build their own base model or drive runs: ``TinyPipelineConfig``,
  ``build_tiny_pipeline`` (an SD-shaped pipeline from a config), the atomic writers
  ``publishing`` / ``replacing``, and ``RunOptions`` / ``run`` (`harness run` as a function).

Everything else in ``harness`` is its implementation, free to change.
"""

from harness.api.environment import cache_dir
from harness.api.data import DataSpec, Example, Experts, ImageSource, LabelledImages, Pairs, PromptsOnly
from harness.api.method import (Batch, Cond, Method, Models, PublishedWeights, TrainConfig, TrainingContext,
                                per_sample_error, randn_like)
from harness.api.noise import EpsilonDiffusion, FlowMatching, NoiseProcess
from harness.api.preset import GenerationSettings, Preset
from harness.api.registry import (BASE_MODELS, METHODS, PRESETS, SCORERS, SUITES, Registry, UnknownEntryError,
                                  register_base_model, register_method, register_preset, register_scorer,
                                  register_suite)
from harness.api.scorer import Scorer
from harness.api.suite import Prompt, Suite, cached_prompts, read_prompts_jsonl, read_text_lines
from harness.atomic import publishing, replacing
from harness.errors import HarnessError

# Imported on first use: these modules import the registries above themselves.
_LAZY = {"TinyPipelineConfig": "harness.models", "build_tiny_pipeline": "harness.models",
         "RunOptions": "harness.run", "run": "harness.run"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness.api' has no attribute {name!r}")


__all__ = [
    "BASE_MODELS", "Batch", "Cond", "DataSpec", "EpsilonDiffusion", "Example", "Experts", "FlowMatching",
    "GenerationSettings", "HarnessError", "ImageSource", "LabelledImages", "METHODS", "Method", "Models",
    "NoiseProcess", "PRESETS", "Pairs", "Preset", "Prompt", "PromptsOnly", "PublishedWeights", "Registry",
    "RunOptions", "SCORERS", "SUITES", "Scorer", "Suite", "TinyPipelineConfig", "TrainConfig",
    "TrainingContext", "UnknownEntryError", "build_tiny_pipeline", "cache_dir", "cached_prompts",
    "per_sample_error", "publishing", "randn_like", "read_prompts_jsonl", "read_text_lines",
    "register_base_model", "register_method", "register_preset", "register_scorer", "register_suite",
    "replacing", "run",
]
