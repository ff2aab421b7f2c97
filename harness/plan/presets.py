"""The papers' presets (``sd15``, ``sdxl``) and SD3.5 Medium's (``sd35``), finding a preset by name, and
showing one resolved.

A method's settings under a preset are, in order of precedence: its Config's defaults (its
paper's), the preset's ``method_defaults`` (the settings every method shares there, e.g. SDXL's
recipe), the method's own recipe for the preset (``methods/recipes/<preset>/<method>.toml``, every value
with its source: ``harness.plan.recipes``), then the user's ``--set`` values.  Worlds register their own presets
(the toy world: ``toy``, ``tiny``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import textwrap
from dataclasses import replace
from pathlib import Path

from harness.api.method import PublishedWeights, setting_help
from harness.api.preset import GenerationSettings, Preset
from harness.api.registry import METHODS, PRESETS, register_preset
from harness.errors import HarnessError
from harness.plan.recipes import method_recipe
from harness.train.trainer import resolve_config

_PAPER_PROTOCOL = GenerationSettings(images_per_prompt=5, num_inference_steps=50, guidance_scale=7.5, batch_size=8)
_PAPER_SCORERS = ("pickscore", "hpsv2", "hpsv2.1", "imagereward", "clip", "aesthetic")
SDXL_VAE = "madebyollin/sdxl-vae-fp16-fix"
# The papers' recipes, <preset>/<method>.toml (found without importing the methods package).
RECIPES = Path(importlib.util.find_spec("methods").submodule_search_locations[0]) / "recipes"


@register_preset("sd15")
def sd15() -> Preset:
    return Preset(
        name="sd15",
        recipes=(RECIPES / "sd15",),
        description="Stable Diffusion 1.5, Pick-a-Pic v2; the papers' evaluation protocol (GPU, downloaded weights)",
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        suites=("pickapic-test", "hpdv2"),
        scorers=_PAPER_SCORERS,
        diversity_embedder="clip",
        generation=replace(_PAPER_PROTOCOL, height=512, width=512),
        data="yuvalkirstain/pickapic_v2",
        method_defaults={"resolution": 512},
    )


@register_preset("sdxl")
def sdxl() -> Preset:
    return Preset(
        name="sdxl",
        recipes=(RECIPES / "sdxl",),
        description="Stable Diffusion XL base 1.0 with the fp16-safe VAE (GPU, downloaded weights)",
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
        suites=("pickapic-test", "hpdv2"),
        scorers=_PAPER_SCORERS,
        diversity_embedder="clip",
        generation=replace(_PAPER_PROTOCOL, height=1024, width=1024, batch_size=4),
        data="yuvalkirstain/pickapic_v2",
        # What `--sdxl` selects in the Salesforce DPO and SmPO train.py: 1024 px when no --resolution is given
        # (DiffusionDPO train.py:379-381), Adafactor, gradient checkpointing (the fp16-safe VAE, their launchers'
        # --pretrained_vae_model_name_or_path, is ``vae`` below, used by training and generation alike).
        method_defaults={"resolution": 1024, "optimizer": "adafactor", "gradient_checkpointing": True},
        vae=SDXL_VAE,
    )


@register_preset("sd35")
def sd35() -> Preset:
    return Preset(
        name="sd35",
        recipes=(RECIPES / "sd35",),
        description="Stable Diffusion 3.5 Medium (flow matching), Pick-a-Pic v2; the model card's sampler settings "
        "(GPU, downloaded weights)",
        base_model="stabilityai/stable-diffusion-3.5-medium",
        suites=("pickapic-test", "hpdv2"),
        # HPSv3 too: what 2026 papers on flow-matching models report (a 7B reward model: docs/results.md).
        scorers=(*_PAPER_SCORERS, "hpsv3"),
        diversity_embedder="clip",
        # The model card's diffusers snippet: 40 steps, guidance 4.5, 1024 px, the pipeline's own flow-matching
        # Euler scheduler (shift 3; scheduler None keeps it).  Not the pipeline's defaults (28 steps, 7.0: SD3's).
        generation=replace(
            _PAPER_PROTOCOL,
            num_inference_steps=40,
            guidance_scale=4.5,
            height=1024,
            width=1024,
            batch_size=4,
            scheduler=None,
        ),
        data="yuvalkirstain/pickapic_v2",
        # Its native 1024 px; bf16, the precision the model card runs it in; gradient checkpointing for its
        # transformer at 4096 image tokens.  AdamW (the default), as diffusers' SD3 scripts.  The text length and
        # LoRA targets of flow_grpo, the one public SD3.5 preference-training code (scripts/train_sd3_dpo.py:213,
        # 602 and 389-398), for every method: one conditioning for all the preset's methods (docs/methods.md).
        method_defaults={
            "resolution": 1024,
            "gradient_checkpointing": True,
            "mixed_precision": "bf16",
            "max_sequence_length": 128,
            "lora_dual_attention": False,
        },
    )


def get_preset(name: str | None) -> Preset:
    """A registered preset; ``None``: the default one, which an installed world claims (the toy world's)."""
    if name is not None:
        return PRESETS.get(name)()
    defaults = [preset for preset in (make() for _, make in PRESETS.items()) if preset.default]
    if len(defaults) != 1:
        claimed = ", ".join(p.name for p in defaults) or "none"
        raise HarnessError(
            f"pass --preset (available: {', '.join(PRESETS.names())}): the installed presets claiming "
            f"to be the default are {claimed}, not exactly one"
        )
    return defaults[0]


def published_weights(preset: str) -> dict[str, PublishedWeights]:
    """Every registered method's released UNet for ``preset``'s base model (``harness run --pretrained``)."""
    return {name: cls.published[preset] for name, cls in METHODS.items() if preset in cls.published}


def no_published_weights(preset: Preset, method: str) -> str:
    """The error of ``--pretrained`` for a method without weights under ``preset``: what it can evaluate instead."""
    here = published_weights(preset.name)
    if here:
        return f"preset {preset.name!r} has no published weights for {method!r}; available: {', '.join(here)}"
    presets: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        for other in cls.published:
            presets.setdefault(other, []).append(name)
    elsewhere = " or ".join(f"--preset {other} ({', '.join(names)})" for other, names in sorted(presets.items()))
    return (
        f"preset {preset.name!r} has no published weights for any method; --pretrained works with "
        f"{elsewhere or 'no installed preset'}"
    )


def evaluation_protocol(settings: GenerationSettings) -> str:
    """The protocol in a few words: ``4 images per prompt (toy-unseen 8), ddim 10 steps, CFG 3.0, 32x32 px, seed 0``."""
    exceptions = ", ".join(f"{suite} {n}" for suite, n in settings.suite_images_per_prompt.items())
    images = f"{settings.images_per_prompt} images per prompt" + (f" ({exceptions})" if exceptions else "")
    scheduler = settings.scheduler or "the model's scheduler"
    size = f"{settings.width}x{settings.height} px" if settings.height and settings.width else "the model's size"
    return (
        f"{images}, {scheduler} {settings.num_inference_steps} steps, CFG {settings.guidance_scale}, {size}, "
        f"seed {settings.seed}"
    )


def preset_summary(preset: Preset) -> list[str]:
    """``harness presets``' lines under a preset's description: its main settings."""
    return [
        f"base model {preset.base_model}; training data {preset.data}",
        f"suites {', '.join(preset.suites)}; scorers {', '.join(preset.scorers)}",
        f"evaluation: {evaluation_protocol(preset.generation)}",
    ]


def show_preset(preset: Preset) -> str:
    """The preset, then every registered method's settings resolved under it, each with where it comes from:
    the method's defaults (its paper's), the preset's settings for every method, or the method's recipe for it,
    a recipe's value also with its source (harness.plan.recipes: a published one's file:line, or why it is ours)."""

    lines = [
        f"preset {preset.name}: {preset.description}",
        f"  base model   {preset.base_model}",
        f"  data         {preset.data}",
        f"  suites       {', '.join(preset.suites)}",
        f"  scorers      {', '.join(preset.scorers)}",
        f"  evaluation   {evaluation_protocol(preset.generation)}",
        "  settings     every method's below, each with where it comes from (their meanings: "
        "`harness methods --show METHOD`)",
    ]
    shared = {**({"vae": preset.vae} if preset.vae else {}), **preset.method_defaults}
    for name, _ in METHODS.items():
        config = resolve_config(name, preset.name, warn_untuned=False)
        found = method_recipe(name, preset.name)
        own = found[1] if found else {}
        if found is None:
            note = (
                f"  (no {preset.name} settings of its own: the preset's for every method)"
                if preset.needs_method_settings
                else ""
            )
        else:
            note = "" if found[0] == preset.name else f"  (its {found[0]} settings)"
        lines.append(f"\n{name}{note}")
        for field in dataclasses.fields(config):
            origin = f"{name} recipe" if field.name in own else "preset" if field.name in shared else "default"
            setting = own.get(field.name)
            if setting is not None and setting.ours is not None:
                origin += f"; ours, not published: {setting.ours}"
            elif setting is not None and setting.source:
                origin += f"; published: {setting.source}"
            lines.append(f"  {field.name:22s} {getattr(config, field.name)!r:34s} {origin}")
    return "\n".join(lines)


def show_method(name: str) -> str:
    """``harness methods --show``: the method, the presets it has recipes for, then every setting of its Config with
    its default and its help text (``harness.api.method.setting_help``)."""
    cls = METHODS.get(name)
    recipes = [preset for preset in PRESETS.names() if (method_recipe(name, preset) or (None,))[0] == preset]
    lines = [
        f"method {name}: {cls.description}",
        f"  recipes for: {', '.join(recipes) or 'no preset'} (each value and its source: "
        f"`harness presets --show PRESET`)",
        "",
        f"  {'setting':22s} {'default':22s} meaning",
    ]
    config = cls.Config()
    for field in dataclasses.fields(config):
        meaning = textwrap.wrap(setting_help(cls.Config, field.name), 70) or [""]
        lines.append(f"  {field.name:22s} {getattr(config, field.name)!r:22s} {meaning[0]}")
        lines.extend(f"  {'':22s} {'':22s} {line}" for line in meaning[1:])
    return "\n".join(lines)
