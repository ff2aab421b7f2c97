"""Evaluating one model: generate the prompt suites with the preset's protocol, score the images, store both.

The one place a model is evaluated.  `harness run` evaluates the base and every trained method
with ``evaluate`` (a job each); `harness evaluate` (``evaluate_checkpoint``) does it for any
checkpoint, into the same results directory; `harness score` (``harness.evaluation.external_images``)
scores images made elsewhere with ``score_suites``.

What makes two models' numbers comparable is the protocol (``Protocol``): the same suites, the
same sampler settings and, above all, the same seeds (image j of prompt k: seed S + k + j·N,
``harness.evaluation.sampling``), so the statistics can pair image with image.  Everything here is
resumable: generation skips the images already on disk with the right hash, scores are cached
by image content and scorer version, and the store's writes are keyed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.api.environment import require_existing_path, say
from harness.api.preset import Preset
from harness.api.registry import METHODS, SCORERS
from harness.api.suite import Suite
from harness.errors import HarnessError
from harness.evaluation.sampling import generate
from harness.evaluation.suites import check_suite_name, get_suite
from harness.models.families import check_network_fits, family_of_model
from harness.models.loading import (
    check_model_available,
    inference_device,
    load_pipeline,
    pipeline_scheduler,
    reporting_load_errors,
)
from harness.plan.locations import is_built_model, require_directory_or_nothing, resolve_base_model
from harness.plan.presets import get_preset
from harness.progress import Stages
from harness.results.compute import JobClock
from harness.results.diversity import prompt_diversity
from harness.results.identity import compared, difference, recorded_location, shown
from harness.results.layout import ResultsDir
from harness.results.store import Store
from harness.scoring import LazyScorer, get_scorer
from harness.scoring.cache import ScoreCache, open_image, score_images
from harness.train import trainer  # trainer.resolve_config read at each call: the tests count calls
from harness.workers import one_cpu_thread

BASE = "base"  # the run of the untrained base model, which every other run is compared with
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
    def of(
        cls, preset: Preset, suites: list[str] | None = None, scorers: list[str] | None = None, **changes: Any
    ) -> Protocol:
        """The preset's protocol; ``suites`` and ``scorers`` replace the preset's when given."""
        return cls(preset, tuple(suites or preset.suites), tuple(scorers or preset.scorers), **changes)

    def load_suite(self, name: str):
        return load_suite(name, self.max_prompts or self.preset.max_prompts)

    def sampling(self, suite: str) -> dict[str, Any]:
        """``harness.evaluation.sampling.generate``'s settings for ``suite``."""
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
    config: Any = None  # that method's resolved settings (``harness.train.trainer.resolve_config``'s TrainConfig)


def unet_subfolder(location: str) -> str | None:
    """Where a UNet is in ``location``: a UNet directory itself, or a repository laid out as a pipeline's
    (a local download or a hub id, as the published ones) with the UNet in ``unet/``.  A local directory
    that is neither is an error naming it as given, with the trained UNets it holds."""
    path = Path(location).expanduser()
    if (path / "config.json").is_file():
        return None
    if path.is_dir() and not (path / "unet" / "config.json").is_file():
        trained = sorted(
            str(Path(location) / found.parent.relative_to(path))
            for pattern in ("final/unet/config.json", "models/*/final/unet/config.json")
            for found in path.glob(pattern)
        )
        hint = f"did you mean {' or '.join(trained)}? " if trained else ""
        raise HarnessError(
            f"--unet {location!r} is not a UNet directory (no config.json) nor a pipeline's (no "
            f"unet/config.json): {hint}`harness train --out DIR` writes its UNet to DIR/final/unet, "
            "`harness run --out DIR` to DIR/models/METHOD/final/unet"
        )
    return "unet"


def load_suite(name: str, limit: int | None = None):
    """A registered suite, cut to its first ``limit`` prompts (a new, smaller suite with its own version)."""
    suite = get_suite(name)
    if limit and len(suite) > limit:
        suite = Suite(name=suite.name, split=suite.split, prompts=suite.prompts[:limit], description=suite.description)
    return suite


def check_prompts_scorable(suites: Sequence[Any], scorers: Sequence[str]) -> None:
    """Every prompt of ``suites`` is one each scorer can score (the toy world's reads its grammar): a prompt it
    cannot read is one line before any image is made, not an error after the base's images."""
    for name in scorers:
        scorer = SCORERS.get(name)
        for suite in suites:
            for prompt in suite.prompts:
                try:
                    scorer.check_prompt(prompt.prompt)
                except HarnessError as exc:
                    raise HarnessError(
                        f"suite {suite.name!r}, prompt {prompt.prompt_id!r} ({prompt.prompt!r}): "
                        f"scorer {name!r} cannot score it: {exc}"
                    ) from None


def check_scorer_options(name: str, keywords: Mapping[str, Any]) -> None:
    """``--scorer-option NAME.KEY=VALUE``: NAME a scorer, KEY one of the locations its constructor takes."""
    import inspect

    accepted = [p for p in inspect.signature(SCORERS.get(name).__init__).parameters if p != "self"]
    unknown = sorted(set(keywords) - set(accepted))
    if unknown:
        raise HarnessError(
            f"scorer {name!r} takes no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}"
        )


def get_or_create_run(store, name: str, preset: Preset, model: str | dict, seed: int, **config: Any) -> int:
    """The id of run ``name`` (its images, scores and leaderboard rows are labelled ``name``); the store
    refuses to resume it with another config, so one results directory stays one experiment.  ``model``: the
    base model as runs record it (``recorded_model``)."""
    return store.get_or_create_run(name, **_run_row(name, preset, model, seed, config))


def check_run(store, name: str, preset: Preset, model: str | dict, seed: int, **config: Any) -> None:
    """``get_or_create_run``'s refusal, from a read-only store, before anything is made."""
    row = _run_row(name, preset, model, seed, config)
    store.check_resumable(name, method=row["method"], base_model=row["base_model"], config=row["config"])


def _run_row(name: str, preset: Preset, model: str | dict, seed: int, config: dict) -> dict[str, Any]:
    return {
        "method": name,
        "preset": preset.name,
        "base_model": shown(model),
        "config": {"preset": preset.name, "base_model": model, "seed": seed, **config},
    }


def recorded_model(location: str, results: ResultsDir) -> str | dict:
    """What a run records of a base model: a built model's name or a hub id, or a directory's content
    fingerprint and path (``harness.results.identity``)."""
    return recorded_location(location, results.root)


# -- one model's evaluation ----------------------------------------------------------------------
def evaluate(
    name: str,
    run_id: int,
    checkpoint: Checkpoint,
    protocol: Protocol,
    results: ResultsDir,
    stage: Callable[[str], None],
    *,
    generate: Callable[..., dict[str, list[dict]]] | None = None,
    score: Callable[..., None] | None = None,
    clock: Callable[[], Any] | None = None,
) -> None:
    """Generate the protocol's suites with ``checkpoint``, score them, store both under run ``name``: the run's
    last job, so the run is 'done' when it ends ('failed' if it fails), with what it cost added to the run's.

    ``generate``, ``score``: ``generate_suites``' and ``score_suites``' signatures, those two by default (the Ray
    backend passes its own, which run them in parts on its workers and add the workers' cost); ``clock``: what
    measures this process's cost (``harness.results.compute.JobClock``)."""
    clock = (clock or JobClock)()
    with Store(results.db) as store:
        store.set_run_status(run_id, "running")
        try:
            stage(f"{name}: generation")
            manifests = (generate or generate_suites)(name, run_id, checkpoint, protocol, results, store)
            stage(f"{name}: scoring")
            (score or score_suites)(name, run_id, manifests, protocol.scorers, protocol.scorer_options, results, store)
            record_diversity(name, run_id, manifests, protocol, results, store)
        except BaseException:
            with contextlib.suppress(HarnessError):  # (a full disk, say) what failed matters more than its record
                store.add_compute(run_id, clock.figures("eval"))
                store.set_run_status(run_id, "failed")
            raise
        store.add_compute(run_id, clock.figures("eval"))
        store.set_run_status(run_id, "done")


def load_checkpoint(checkpoint: Checkpoint, protocol: Protocol):
    """The pipeline to sample ``checkpoint`` with, on the inference device."""
    device, dtype = inference_device()
    pipe = load_pipeline(
        checkpoint.model,
        unet=checkpoint.unet,
        unet_subfolder=checkpoint.unet_subfolder,
        dtype=dtype,
        device=device,
        vae=protocol.vae or protocol.preset.vae,
    )
    if checkpoint.lora is not None:
        load_lora(pipe, checkpoint.lora)
    if checkpoint.method is not None:
        pipe = METHODS.get(checkpoint.method)(checkpoint.config).sampler(pipe)
    return pipe


def load_lora(pipe: Any, location: str) -> None:
    """Load LoRA adapters (diffusers format, safetensors only) into ``pipe``'s UNet and merge them.

    Merged, sampling costs what the plain UNet costs, and the weights are computed as
    ``harness.train.export`` computes the merged UNet it writes beside the adapters."""
    with reporting_load_errors("LoRA", location):
        pipe.load_lora_weights(location, use_safetensors=True)
    pipe.fuse_lora()


def generate_suites(
    name: str,
    run_id: int,
    checkpoint: Checkpoint,
    protocol: Protocol,
    results: ResultsDir,
    store,
    shard: tuple[int, int] | None = None,
) -> dict[str, list[dict]]:
    """Sample every suite of the protocol into ``images/<name>/<suite>/``; record the images; return the
    manifests' rows by suite (their paths relative to that folder).

    ``shard=(r, W)``: only part ``r`` of ``W`` of every suite (``harness.evaluation.sampling.generate``'s), its rows
    recorded and returned; ``harness.evaluation.sampling.merge_shards`` writes the manifests once every part is made."""
    pipe = load_checkpoint(checkpoint, protocol)
    manifests = {}
    for suite_name in protocol.suites:
        suite = protocol.load_suite(suite_name)
        say(f"   {name} / {suite.name} ({len(suite)} prompts)")
        rows = generate(
            pipe, suite, results.images(name, suite.name), **protocol.sampling(suite.name), shard=shard, model=name
        )
        folder = results.relative_images(name, suite.name)
        stored = [{**row, "path": str(folder / row["path"])} for row in rows]  # the store's: relative to the results
        store.add_images(run_id, suite=suite.name, suite_version=suite.version, split=suite.split, rows=stored)
        manifests[suite.name] = rows
    del pipe
    return manifests


def score_suites(
    name: str,
    run_id: int,
    manifests: Mapping[str, list[dict]],
    scorers: Sequence[str],
    scorer_options: Mapping[str, Mapping[str, Any]],
    results: ResultsDir,
    store,
) -> None:
    """Score run ``name``'s stored images (``manifests``: rows by suite, paths relative to the suite's
    image folder) with every scorer; unchanged images are never scored twice, and a scorer with nothing to score
    is never loaded."""
    with ScoreCache(results.score_cache) as cache:
        for scorer_name in scorers:
            scorer = LazyScorer(scorer_name, **scorer_options.get(scorer_name, {}))
            for suite_name, rows in manifests.items():
                folder = results.images(name, suite_name)
                values = score_images(
                    scorer,
                    [folder / row["path"] for row in rows],
                    [row["prompt"] for row in rows],
                    [row["sha256"] for row in rows],
                    cache=cache,
                )
                store.add_scores(run_id, suite=suite_name, rows=score_rows(scorer, rows, values))


def record_diversity(
    name: str, run_id: int, manifests: Mapping[str, list[dict]], protocol: Protocol, results: ResultsDir, store
) -> None:
    """Store the in-prompt diversity of run ``name``'s images (``harness.results.diversity``) in the space of the
    preset's ``diversity_embedder``, where the protocol scores with that scorer (so its weights are at hand)."""
    embedder = protocol.preset.diversity_embedder
    if embedder is None or embedder not in protocol.scorers:
        return
    scorer = get_scorer(embedder, **protocol.scorer_options.get(embedder, {}))
    for suite_name, rows in manifests.items():
        folder = results.images(name, suite_name)
        embeddings = []
        by_prompt: dict[str, list[dict]] = {}
        for row in rows:
            by_prompt.setdefault(row["prompt_id"], []).append(row)
        for prompt_rows in by_prompt.values():  # a prompt's k images at a time: a batch any device holds
            images = [open_image(folder / row["path"]) for row in prompt_rows]
            embeddings += scorer.embed(images)
        prompt_ids = [row["prompt_id"] for part in by_prompt.values() for row in part]
        store.add_diversity(
            run_id,
            suite=suite_name,
            embedder=scorer.name,
            version=scorer.version,
            rows=prompt_diversity(prompt_ids, embeddings),
        )


def score_rows(scorer, rows: list[dict], values: list[float]) -> list[dict]:
    """The store's score rows of one scorer's ``values`` for the images ``rows``."""
    return [
        {
            "prompt_id": row["prompt_id"],
            "image_index": row["image_index"],
            "scorer": scorer.name,
            "version": scorer.version,
            "scale": scorer.scale,
            "higher_is_better": scorer.higher_is_better,
            "value": value,
        }
        for row, value in zip(rows, values)
    ]


# -- `harness evaluate`: any checkpoint into a results directory ----------------------------------
@dataclass
class EvaluateOptions:
    model: str  # a pipeline: toy, tiny, a hub id or a local directory
    out: Path
    unet: str | None = None
    lora: str | None = None
    method: str | None = None  # sample through this method's sampler
    name: str | None = None  # the run's name (None: made from the location evaluated)
    preset: str | None = None  # None: the preset the results directory was made with, else toy
    suites: list[str] | None = None
    scorers: list[str] | None = None
    max_prompts: int | None = None
    scorer_options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Recorded:
    """What a results directory holds already (nothing, for a new one)."""

    base: dict | None = None  # the base run's runs row (preset, base_model, config)
    configs: Mapping[str, dict] = field(default_factory=dict)  # run name -> its config
    base_suites: Mapping[str, str] = field(default_factory=dict)  # suite -> version of the base's images
    base_scored: frozenset[tuple[str, str]] = frozenset()  # (suite, metric) the base has scores of


@dataclass(frozen=True)
class Evaluation:
    """A checked `harness evaluate`: what to evaluate, with which protocol, and the base's suites still to do."""

    name: str
    checkpoint: Checkpoint
    config: dict  # what the run records about the checkpoint
    model: str | dict  # what the run records of its model (``recorded_model``)
    base_model: str  # the base's location (a built model's name unresolved)
    base: str | dict  # what the base's run records of it
    base_suites: tuple[str, ...]
    protocol: Protocol
    results: ResultsDir


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def evaluate_checkpoint(plan: Evaluation) -> None:
    """`harness evaluate`: evaluate a checkpoint with the preset's protocol into the results directory (and the
    base model too, on the suites it has not been evaluated on there)."""
    import torch

    results, preset, seed = plan.results, plan.protocol.preset, plan.protocol.seed
    stage = Stages()
    stage("base model")
    base_model = resolve_base_model(plan.base_model)
    checkpoint = dataclasses.replace(plan.checkpoint, model=resolve_base_model(plan.checkpoint.model))
    results.root.mkdir(parents=True, exist_ok=True)
    with Store(results.db) as store:
        base_id = get_or_create_run(store, BASE, preset, plan.base, seed)
        run_id = get_or_create_run(store, plan.name, preset, plan.model, seed, evaluated=plan.config)
    with one_cpu_thread(on_gpu=torch.cuda.is_available()):  # as `harness run`'s jobs: the same images
        if plan.base_suites:
            stage(
                f"{BASE}: not evaluated on {', '.join(plan.base_suites)} in {results.root} yet: evaluating the "
                f"base model {plan.base_model} too (the leaderboard's Δ and win rates compare with it)"
            )
            evaluate(
                BASE,
                base_id,
                Checkpoint(base_model),
                dataclasses.replace(plan.protocol, suites=plan.base_suites),
                results,
                stage,
            )
        evaluate(plan.name, run_id, checkpoint, plan.protocol, results, stage)


def plan_evaluation(options: EvaluateOptions) -> Evaluation:
    """Check everything `harness evaluate` was given, cheap checks first; creates nothing."""
    results = ResultsDir(options.out)
    require_directory_or_nothing(results.root, "--out")
    for option, location in (("--model", options.model), ("--unet", options.unet), ("--lora", options.lora)):
        if location is not None:
            require_existing_path(location, option)
    recorded = _recorded(results)
    preset = _preset(options.preset, recorded, results)
    name = options.name or _default_name(options.lora or options.unet or options.model)
    if not NAME_PATTERN.fullmatch(name) or name == BASE:
        raise HarnessError(
            f"--name {name!r}: a run's name is letters, digits and . _ + - (not {BASE!r}, the base model's run)"
        )
    if options.method is not None:
        METHODS.get(options.method)
    for suite in options.suites or ():
        check_suite_name(suite)
    for scorer in options.scorers or ():
        SCORERS.get(scorer)
    for scorer, keywords in options.scorer_options.items():
        check_scorer_options(scorer, keywords)
    seed = recorded.base["config"].get("seed", 0) if recorded.base else 0
    protocol = Protocol.of(
        preset,
        options.suites,
        options.scorers,
        max_prompts=options.max_prompts,
        seed=seed,
        scorer_options=options.scorer_options,
    )
    suites = [protocol.load_suite(suite) for suite in protocol.suites]  # a suite file's mistakes, a hub suite not here
    check_prompts_scorable(suites, protocol.scorers)

    if not is_built_model(options.model):
        check_model_available(options.model, config_file="model_index.json", what="--model", pass_as="--model DIR")
    subfolder = None
    if options.unet is not None:
        subfolder = unet_subfolder(options.unet)
        check_model_available(
            options.unet, config_file="config.json", subfolder=subfolder, what="--unet", pass_as="--unet DIR"
        )
        check_network_fits(options.model, options.unet, what="--unet", subfolder=subfolder)
    if options.lora is not None:
        _check_lora(options.lora)
        check_network_fits(options.model, options.lora, what="--lora", lora_weights=LORA_WEIGHTS)
    check_sampler_fits(resolve_base_model(options.model), preset, shown=options.model)
    checkpoint = Checkpoint(
        options.model,
        unet=_absolute(options.unet),
        unet_subfolder=subfolder,
        lora=_absolute(options.lora),
        method=options.method,
        config=trainer.resolve_config(options.method, preset.name) if options.method else None,
    )
    model = recorded_model(options.model, results)
    config = {
        "model": model,
        "unet": _located(options.unet, results),
        "lora": _located(options.lora, results),
        "method": options.method,
    }
    if name in recorded.configs:
        earlier = recorded.configs[name].get("evaluated")
        differs = "a run of harness run or score" if earlier is None else difference(earlier, config)
        if differs is not None:
            raise HarnessError(
                f"{results.root} has a run named {name!r} already, of another model ({differs}); "
                "give this one another --name"
            )
    # The model a UNet or LoRA modifies is the base it is compared with; a whole pipeline of its own is compared
    # with the preset's base.
    base_model = options.model if options.unet or options.lora else preset.base_model
    base = model if options.unet or options.lora else recorded_model(preset.base_model, results)
    if recorded.base:
        base_recorded = recorded.base["config"].get("base_model")
        if options.unet or options.lora:
            if compared(base_recorded) != compared(model):
                raise HarnessError(
                    f"--model {options.model}: the base model of {results.root} is "
                    f"{shown(base_recorded)}; a UNet or LoRA is compared with the base it modifies: "
                    "pass that base as --model, or evaluate into another --out"
                )
        else:
            base_model, base = recorded.base["base_model"], base_recorded
    if results.db.exists():
        with Store(results.db, readonly=True) as store:
            check_suites(store, suites, results)
    return Evaluation(
        name,
        checkpoint,
        config,
        model,
        base_model,
        base,
        _base_suites_to_do(recorded, suites, protocol),
        protocol,
        results,
    )


def check_suites(store, suites: Sequence, results: ResultsDir) -> None:
    """A suite's images in one results directory all come from the same prompts: a suite whose prompts changed
    since (its file edited, another --max-prompts) is refused in one line before anything is made."""
    recorded = store.images_frame().drop_duplicates("suite")
    versions = dict(zip(recorded["suite"], recorded["suite_version"]))
    for suite in suites:
        version = versions.get(suite.name)
        if version is not None and version != suite.version:
            raise HarnessError(
                f"suite {suite.name!r}: the images in {results.root} were made from other prompts "
                f"(suite version {version[:12]} recorded, {suite.version[:12]} now: its file edited, "
                "or another --max-prompts); use the prompts they were made from, or another --out"
            )


def check_sampler_fits(model: str, preset: Preset, shown: str | None = None) -> None:
    """The preset's sampler must fit the model (a diffusion sampler cannot sample SD3): one line before anything
    is made (``shown``: the model as the user named it, where ``model`` is where it was built)."""
    mismatch = family_of_model(model).sampler_mismatch(preset.generation.scheduler, pipeline_scheduler(model))
    if mismatch:
        raise HarnessError(
            f"--model {shown or model!r}: the {preset.name} preset's {mismatch}; pass the --preset of "
            "a model of its kind (flow matching: sd35, tiny-flow)"
        )


def _recorded(results: ResultsDir) -> _Recorded:
    import json

    if not results.db.exists():
        return _Recorded()
    with Store(results.db, readonly=True) as store:  # a corrupt or foreign file is refused here
        runs, images, scores = store.runs_frame(), store.images_frame(), store.scores_frame()
    configs = {row.key: json.loads(row.config) for row in runs.itertuples()}
    base = runs[runs["key"] == BASE]
    if base.empty:
        return _Recorded(configs=configs)
    base_images = images[images["method"] == BASE].drop_duplicates("suite")
    base_scores = scores[scores["method"] == BASE][["suite", "metric"]].drop_duplicates()
    return _Recorded(
        {**base.iloc[0].to_dict(), "config": configs[BASE]},
        configs,
        dict(zip(base_images["suite"], base_images["suite_version"])),
        frozenset(base_scores.itertuples(index=False, name=None)),
    )


def _preset(name: str | None, recorded: _Recorded, results: ResultsDir) -> Preset:
    """``--preset``, which must be the one the results directory's base was evaluated with (its protocol)."""
    made_with = recorded.base["preset"] if recorded.base else None
    if name is not None and made_with is not None and name != made_with:
        raise HarnessError(
            f"the base model in {results.root} was evaluated with preset {made_with!r}, not {name!r}: "
            f"evaluate with its protocol (--preset {made_with}) or into another --out"
        )
    return get_preset(name or made_with)  # neither: the default preset


def _base_suites_to_do(recorded: _Recorded, suites: list, protocol: Protocol) -> tuple[str, ...]:
    """The suites the base has no images or scores of yet."""
    todo = []
    for suite in suites:
        version = recorded.base_suites.get(suite.name)
        if version is None or any((suite.name, scorer) not in recorded.base_scored for scorer in protocol.scorers):
            todo.append(suite.name)
    return tuple(todo)


def _check_lora(location: str) -> None:
    folder = Path(location).expanduser()
    if folder.exists() and not (folder / LORA_WEIGHTS).is_file():
        raise HarnessError(
            f"--lora {location!r} has no {LORA_WEIGHTS} (LoRA adapters in diffusers format, as "
            "`harness train` writes them to OUT/final/lora with lora_rank > 0)"
        )


def _located(location: str | None, results: ResultsDir) -> str | dict | None:
    return None if location is None else recorded_location(location, results.root)


def _absolute(location: str | None) -> str | None:
    """A local path made absolute (what is loaded, from any working directory), a hub id as it is."""
    if location is None or is_built_model(location) or not Path(location).expanduser().exists():
        return location
    return str(Path(location).expanduser().resolve())


def _default_name(location: str) -> str:
    """A run name from the location evaluated: its last three path parts (``models/dpo/final/unet`` ->
    ``dpo-final-unet``; a hub id ``owner/name`` -> ``owner-name``)."""
    parts = [part for part in Path(location).parts if part not in ("/", ".", "..")][-3:]
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", "-".join(parts)).strip("-.") or "model"
