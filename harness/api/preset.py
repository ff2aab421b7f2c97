"""The preset contract: everything `harness run` needs besides the method names, as plain data.

A preset names the base model, how the training data is obtained, the prompt suites,
the scorers, the evaluation protocol, and the settings every method trains with under
it (``method_defaults``: a shared recipe such as SDXL's Adafactor and 1024 px, or a
scaled-down world's step counts).  Each method's own settings for the preset are data: a
recipe file per method in the preset's recipe folders (``recipes``; ``harness/plan/recipes.py``),
so a new preset is a folder of recipes plus its ``Preset``.  Presets are registered with ``@register_preset(name)``
on a function that builds one: the papers' in ``harness/plan/presets.py``, the toy world's
in its own package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GenerationSettings:
    """The evaluation protocol: images per prompt, sampler settings, resolution."""

    images_per_prompt: int = 5
    # Per-suite exceptions to images_per_prompt: a suite with few prompts needs more images per
    # prompt for the same statistical power (image j of a prompt has the same seed either way).
    suite_images_per_prompt: dict[str, int] = field(default_factory=dict)
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    seed: int = 0
    scheduler: str | None = "ddpm"

    def images_for(self, suite: str) -> int:
        return self.suite_images_per_prompt.get(suite, self.images_per_prompt)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    base_model: str  # hub id, local directory, or a registered built model (harness.api.BASE_MODELS)
    suites: tuple[str, ...]
    scorers: tuple[str, ...]
    generation: GenerationSettings
    # Training data: a directory / hub id, or "synthesize" (sample the base on ``training_captions``,
    # label with the preset's scorers, or with ``synthesize["scorers"]`` where those are fewer: a scorer the labels
    # never see stays a held-out judge; ``synthesize`` holds harness.data.synthesis.synthesize's settings).
    data: str
    synthesize: dict[str, Any] = field(default_factory=dict)
    training_captions: Callable[[], list[str]] | None = None  # a module-level function (runs in workers)
    max_prompts: int | None = None  # cap on prompts per suite (fast presets)
    # Folders of this preset's recipes, ``<method>.toml`` each: a method's own settings under it, every value with
    # its source (harness.plan.recipes).  A plugin's preset gives its own: ``(Path(__file__).parent / "recipes",)``.
    recipes: tuple[Path, ...] = ()
    # Settings every method trains with under this preset, before the method's own entry for it.
    method_defaults: dict[str, Any] = field(default_factory=dict)
    # True where the papers' hyper-parameters do not fit (a scaled-down world): a method with no
    # entry of its own for this preset trains with ``method_defaults`` alone, and is warned about.
    needs_method_settings: bool = False
    # A twin of another preset (the toy world on a flow-matching base: "toy-flow" of "toy"): a method without
    # an entry for this preset takes its entry for that one.
    method_settings_from: str | None = None
    vae: str | None = None  # replacement VAE for training and generation (SDXL's fp16-safe one)
    # A scorer whose ``embed`` gives image embeddings: each evaluated prompt's in-prompt diversity is measured in
    # its space (the reward-hacking report), where the protocol scores with it.  None: no diversity.
    diversity_embedder: str | None = None
    # The preset `harness run` uses without --preset (one installed world claims it: the toy world).
    default: bool = False
