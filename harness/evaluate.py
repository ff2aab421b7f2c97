"""Evaluating one model: generate the prompt suites with the preset's protocol, score the images, store both.

The one place a model is evaluated.  `harness run` evaluates the base and every trained method
with ``evaluate`` (a job each); `harness evaluate` (``evaluate_checkpoint``) does it for any
checkpoint, into the same results directory; `harness score` (``harness.external_images``)
scores images made elsewhere with ``score_suites``.

What makes two models' numbers comparable is the protocol (``Protocol``): the same suites, the
same sampler settings and, above all, the same seeds (image j of prompt k: seed S + k + j·N,
``harness.sampling``), so the statistics can pair image with image.  Everything here is
resumable: generation skips the images already on disk with the right hash, scores are cached
by image content and scorer version, and the store's writes are keyed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import Preset, get_preset, require_directory_or_nothing, require_existing_path, resolve_base_model
from harness.errors import HarnessError
from harness.progress import Stages, say
from harness.registry import METHODS, SCORERS, SUITES
from harness.results import ResultsDir

BASE = "base"  # the run of the untrained base model, which every other run is compared with
BUILT_MODELS = ("toy", "tiny")  # base models built here rather than loaded (harness.config.resolve_base_model)
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # what `harness train` writes to final/lora (train_export)


@dataclass(frozen=True)
class Protocol:
    """How models are evaluated: the preset's suites, scorers and generation settings, with a run's changes.

    Two models evaluated with the same protocol have images made from the same prompts and seeds."""

    preset: Preset
    suites: tuple[str, ...]
    scorers: tuple[str, ...]
    max_prompts: int | None = None  # None: the preset's cap
    images_per_prompt: int | None = None  # None: the preset's, per suite
    steps: int | None = None  # sampler steps (None: the preset's)
    seed: int = 0  # added to the preset's generation seed (`harness run --seed`)
    vae: str | None = None  # None: the preset's
    scorer_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, preset: Preset, suites: list[str] | None = None, scorers: list[str] | None = None,
           **changes: Any) -> Protocol:
        """The preset's protocol; ``suites`` and ``scorers`` replace the preset's when given."""
        return cls(preset, tuple(suites or preset.suites), tuple(scorers or preset.scorers), **changes)

    def load_suite(self, name: str):
        return load_suite(name, self.max_prompts or self.preset.max_prompts)

    def sampling(self, suite: str) -> dict[str, Any]:
        """``harness.sampling.generate``'s settings for ``suite``."""
        settings = self.preset.generation
        return dict(
            images_per_prompt=self.images_per_prompt or settings.images_for(suite),
            batch_size=settings.batch_size,
            seed=settings.seed + self.seed,
            num_inference_steps=self.steps or settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            height=settings.height,
            width=settings.width,
            scheduler=settings.scheduler,
        )


@dataclass(frozen=True)
class Checkpoint:
    """What is evaluated: a pipeline, optionally with another UNet, LoRA adapters, a method's sampler."""

    model: str  # a pipeline: hub id or local directory (resolved: ``resolve_base_model``)
    unet: str | None = None  # replaces the pipeline's UNet (a diffusers UNet directory or repository)
    unet_subfolder: str | None = None
    lora: str | None = None  # LoRA adapters loaded into the UNet (diffusers format, as `harness train` writes)
    method: str | None = None  # generate through this method's sampler (``Method.sampler``)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # that method's settings


def load_suite(name: str, limit: int | None = None):
    """A registered suite, cut to its first ``limit`` prompts (a new, smaller suite with its own version)."""
    from harness.suites import Suite, get_suite

    suite = get_suite(name)
    if limit and len(suite) > limit:
        suite = Suite(name=suite.name, split=suite.split, prompts=suite.prompts[:limit], description=suite.description)
    return suite


def check_scorer_options(name: str, keywords: Mapping[str, Any]) -> None:
    """``--scorer-option NAME.KEY=VALUE``: NAME a scorer, KEY one of the locations its constructor takes."""
    import inspect

    accepted = [p for p in inspect.signature(SCORERS.get(name).__init__).parameters if p != "self"]
    unknown = sorted(set(keywords) - set(accepted))
    if unknown:
        raise HarnessError(f"scorer {name!r} takes no option {', '.join(unknown)}; "
                           f"its options: {', '.join(accepted) or 'none'}")


def get_or_create_run(store, name: str, preset: Preset, model: str, seed: int, **config: Any) -> int:
    """The id of run ``name`` (its images, scores and leaderboard rows are labelled ``name``); the store
    refuses to resume it with another config, so one results directory stays one experiment."""
    config = {"preset": preset.name, "base_model": model, "seed": seed, **config}
    return store.get_or_create_run(name, method=name, preset=preset.name, base_model=model, config=config)


# -- one model's evaluation ----------------------------------------------------------------------
def evaluate(name: str, run_id: int, checkpoint: Checkpoint, protocol: Protocol, results: ResultsDir,
             stage: Callable[[str], None]) -> None:
    """Generate the protocol's suites with ``checkpoint``, score them, store both under run ``name``."""
    from harness.compute import JobClock
    from harness.store import Store

    clock = JobClock()
    with Store(results.db) as store:
        stage(f"{name}: generation")
        manifests = generate_suites(name, run_id, checkpoint, protocol, results, store)
        stage(f"{name}: scoring")
        score_suites(name, run_id, manifests, protocol, results, store)
        store.add_compute(run_id, clock.figures("eval"))


def load_checkpoint(checkpoint: Checkpoint, protocol: Protocol):
    """The pipeline to sample ``checkpoint`` with, on the inference device."""
    from harness.models import inference_device, load_pipeline

    device, dtype = inference_device()
    pipe = load_pipeline(checkpoint.model, unet=checkpoint.unet, unet_subfolder=checkpoint.unet_subfolder,
                         dtype=dtype, device=device, vae=protocol.vae or protocol.preset.vae)
    if checkpoint.lora is not None:
        load_lora(pipe, checkpoint.lora)
    if checkpoint.method is not None:
        from harness.trainer import resolve_config

        method = METHODS.get(checkpoint.method)
        pipe = method(resolve_config(checkpoint.method, protocol.preset.name, dict(checkpoint.overrides))).sampler(pipe)
    return pipe


def load_lora(pipe: Any, location: str) -> None:
    """Load LoRA adapters (diffusers format, safetensors only) into ``pipe``'s UNet and merge them.

    Merged, sampling costs what the plain UNet costs, and the weights are computed as
    ``harness.train_export`` computes the merged UNet it writes beside the adapters."""
    from harness.models import reporting_load_errors

    with reporting_load_errors("LoRA", location):
        pipe.load_lora_weights(location, use_safetensors=True)
    pipe.fuse_lora()


def generate_suites(name: str, run_id: int, checkpoint: Checkpoint, protocol: Protocol, results: ResultsDir,
                    store) -> dict[str, list[dict]]:
    """Sample every suite of the protocol into ``images/<name>/<suite>/``; record the images; return the
    manifests' rows by suite (their paths relative to that folder)."""
    from harness.sampling import generate

    pipe = load_checkpoint(checkpoint, protocol)
    manifests = {}
    for suite_name in protocol.suites:
        suite = protocol.load_suite(suite_name)
        say(f"   {name} / {suite.name} ({len(suite)} prompts)")
        rows = generate(pipe, suite, results.images(name, suite.name), **protocol.sampling(suite.name))
        folder = results.relative_images(name, suite.name)
        stored = [{**row, "path": str(folder / row["path"])} for row in rows]  # the store's: relative to the results
        store.add_images(run_id, suite=suite.name, suite_version=suite.version, split=suite.split, rows=stored)
        manifests[suite.name] = rows
    del pipe
    return manifests


def score_suites(name: str, run_id: int, manifests: Mapping[str, list[dict]], protocol: Protocol,
                 results: ResultsDir, store) -> None:
    """Score run ``name``'s stored images (``manifests``: rows by suite, paths relative to the suite's
    image folder) with every scorer of the protocol; unchanged images are never scored twice."""
    from harness.scoring import get_scorer, score_images
    from harness.scoring.cache import ScoreCache

    with ScoreCache(results.score_cache) as cache:
        for scorer_name in protocol.scorers:
            scorer = get_scorer(scorer_name, **protocol.scorer_options.get(scorer_name, {}))
            for suite_name, rows in manifests.items():
                folder = results.images(name, suite_name)
                values = score_images(scorer, [folder / row["path"] for row in rows], [row["prompt"] for row in rows],
                                      [row["sha256"] for row in rows], cache=cache)
                store.add_scores(run_id, suite=suite_name, rows=score_rows(scorer, rows, values))


def score_rows(scorer, rows: list[dict], values: list[float]) -> list[dict]:
    """The store's score rows of one scorer's ``values`` for the images ``rows``."""
    return [{"prompt_id": row["prompt_id"], "image_index": row["image_index"], "scorer": scorer.name,
             "version": scorer.version, "scale": scorer.scale, "value": value}
            for row, value in zip(rows, values)]
