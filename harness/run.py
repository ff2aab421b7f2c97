"""`harness run`: train each method from one base, generate, score, store, rank.

Each method's training is one job, and each model's evaluation (the base's and every trained
method's: sample the suites, score the images) another.  The jobs run side by side in worker
processes (``harness.workers``) and write to the one results database: first the base's
evaluation, which needs no training data (the toy preset makes the data in this process
meanwhile), then the trainings, and each trained model's evaluation as soon as its training ends.

Every stage is idempotent (the trainer resumes from its checkpoints, generation
skips images already on disk with the right hash, scores are cached by image
hash and scorer version, store writes are keyed), so rerunning an interrupted
run does only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import (Preset, get_preset, require_directory_or_nothing, require_existing_path,
                            resolve_base_model)
from harness.errors import HarnessError
from harness.registry import METHODS, SCORERS, SUITES

BASE = "base"


@dataclass
class RunOptions:
    methods: list[str]
    out: Path
    preset: str = "toy"
    model: str | None = None
    data: str | None = None
    suites: list[str] | None = None
    scorers: list[str] | None = None
    max_prompts: int | None = None
    images_per_prompt: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> {field: value}
    pretrained: bool = False
    seed: int = 0
    jobs: int | None = None  # jobs (trainings, evaluations) at once (None: one per core on a CPU, one per GPU)


@dataclass
class EvaluatedModel:
    """One row of the comparison: the base or a method's trained (or published) UNet."""

    method: str
    run_id: int
    unet: str | None = None
    unet_subfolder: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    train: bool = False  # still to be trained (then ``unet`` is set to the result)


def validate(options: RunOptions, preset: Preset) -> None:
    """Fail on any bad input before anything is created or any heavy work starts (cheap checks first)."""
    _validate_counts(options)
    _validate_locations(options)
    _validate_names(options, preset)
    _validate_configs(options, preset)
    for name in options.suites or preset.suites:  # a suite file's mistakes, or a hub suite not available here
        load_suite(name, options.max_prompts or preset.max_prompts)


def _validate_counts(options: RunOptions) -> None:
    counts = {"--max-prompts": options.max_prompts, "--images-per-prompt": options.images_per_prompt,
              "--jobs": options.jobs}
    for option, value in counts.items():
        if value is not None and value < 1:
            raise HarnessError(f"{option} must be at least 1, not {value}")


def _validate_locations(options: RunOptions) -> None:
    from harness.store import Store

    require_directory_or_nothing(options.out, "--out")
    db = options.out / "results.db"
    if db.exists():  # a corrupt or foreign file is refused before anything is added beside it
        Store(db, readonly=True).close()
    for option, location in (("--model", options.model), ("--data", options.data)):
        if location is not None:
            require_existing_path(location, option)


def _validate_names(options: RunOptions, preset: Preset) -> None:
    for name in options.methods:
        if name == BASE:
            raise HarnessError(f"{BASE!r} is the untrained base model, always evaluated; it is not a method")
        METHODS.get(name)
        if options.pretrained and name not in preset.pretrained:
            available = ", ".join(preset.pretrained) or "none"
            raise HarnessError(f"preset {preset.name!r} has no published weights for {name!r}; available: {available}")
    for name in options.suites or preset.suites:
        SUITES.get(name.split(":", 1)[0])  # NAME:PATH reads a local copy of suite NAME
    for name in options.scorers or preset.scorers:
        SCORERS.get(name)
    unknown = set(options.overrides) - set(options.methods)
    if unknown:
        raise HarnessError(f"--set names methods that are not run: {', '.join(sorted(unknown))}")


def _validate_configs(options: RunOptions, preset: Preset) -> None:
    """Every method's config as it will train: the preset's settings and --set values, checked by type and range."""
    from harness.trainer import resolve_config

    for method in options.methods:
        resolve_config(method, preset.name, preset.overrides_for(method, options.overrides.get(method)))


def run(options: RunOptions) -> list[dict]:
    """Run the whole comparison and return the leaderboard rows."""
    from harness.store import Store
    from harness.workers import WorkerPool, default_processes, one_cpu_thread

    preset = get_preset(options.preset)
    validate(options, preset)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()

    stage("base model")
    base_model = resolve_base_model(options.model or preset.base_model)
    store = Store(out / "results.db")

    def make_run(method: str, config: dict) -> int:
        # One results directory is one experiment: a method's run is keyed by its name, and the
        # store refuses to resume it with another config (images/<method>/ would be mixed up).
        config = {"preset": preset.name, "base_model": base_model, "seed": options.seed, **config}
        return store.get_or_create_run(method, method=method, preset=preset.name, base_model=base_model, config=config)

    def job(model: EvaluatedModel, data_dir: str | None) -> _ModelJob:
        return _ModelJob(model, options, preset, base_model, data_dir, stage)

    # Every run is made (or its config checked against the stored one) before any heavy work.
    data = None if options.pretrained else options.data or preset.data
    data_dir = str(out / "data") if data == "synthesize" else data
    base = EvaluatedModel(BASE, make_run(BASE, {}))
    methods = []
    for method in options.methods:
        if options.pretrained:
            unet, subfolder = preset.pretrained[method]
            methods.append(EvaluatedModel(method, make_run(method, {"pretrained": unet}), unet, subfolder))
        else:
            overrides = preset.overrides_for(method, options.overrides.get(method))
            run_id = make_run(method, {"data": data_dir, "overrides": overrides})
            methods.append(EvaluatedModel(method, run_id, overrides=overrides, train=True))

    n_models = len(methods) + 1
    processes = min(options.jobs or default_processes(n_models), n_models)
    _import_job_libraries()
    stage(f"{n_models} models: training, then generation and scoring, {processes} jobs at a time")
    # Jobs start in the order they are submitted, as workers free up: the base's evaluation first
    # (it needs no training data, so it runs while the data is made here), then the trainings, and
    # each trained model's evaluation as soon as its training ends.
    with WorkerPool(processes) as pool:
        pending = {pool.submit(_evaluate, job(base, None))}
        if data == "synthesize":
            with one_cpu_thread(on_gpu=pool.gpus > 0):  # the data depends on no core count either
                _synthesize(options, preset, base_model, Path(data_dir), stage)
        if data_dir:
            _record_overlap(store, [base, *methods], options, preset, data_dir)
        trainings = {pool.submit(_train, job(model, data_dir)) for model in methods if model.train}
        pending |= trainings
        pending |= {pool.submit(_evaluate, job(model, data_dir)) for model in methods if not model.train}
        while pending:
            for future in pool.wait_any(pending):
                pending.remove(future)
                if future in trainings:
                    pending.add(pool.submit(_evaluate, job(future.result(), data_dir)))
    compute = {"wall_s": round(stage.elapsed(), 1)}
    for model in (base, *methods):
        store.set_run_status(model.run_id, "done", compute if model.method == BASE else None)
    return leaderboard(out)


def _import_job_libraries() -> None:
    """Import here, once, what every job imports: forked workers inherit it (each spent ~2 s of CPU on it)."""
    import accelerate  # noqa: F401  (the trainer)
    from diffusers import StableDiffusionPipeline  # noqa: F401  (loading and sampling; imports the models)
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (the trainer's logs)


def _record_overlap(store, models: list[EvaluatedModel], options: RunOptions, preset: Preset, data_dir: str) -> None:
    """How many prompts of each unseen suite the training data has captions for (0 is what "unseen" promises)."""
    from harness.data import training_captions
    from harness.suites import caption_overlap

    captions = training_captions(data_dir)
    for name in options.suites or preset.suites:
        suite = load_suite(name, options.max_prompts or preset.max_prompts)
        if suite.split != "unseen":
            continue
        overlap = caption_overlap(suite, captions)
        for model in models:
            store.set_overlap(model.run_id, suite=suite.name, n_overlap=overlap)
        if overlap:
            print(f"   warning: {overlap} prompts of unseen suite {suite.name!r} appear in the training captions")


class _Stages:
    """Prints each stage's name with the time since the run started (where the minutes go)."""

    def __init__(self) -> None:
        self.started = time.time()  # wall clock: worker processes print stages too

    def __call__(self, name: str) -> None:
        print(f"== {name}  [{self.elapsed():.0f} s]", flush=True)

    def elapsed(self) -> float:
        return time.time() - self.started


def _synthesize(options: RunOptions, preset: Preset, base_model: str, data_dir: Path, stage: _Stages) -> None:
    from harness.models import default_cache_dir
    from harness.preference_data import synthesize
    from harness.toyworld import grammar

    stage("training data (base samples labelled by the rewards)")
    settings = dict(preset.synthesize)
    max_captions = settings.pop("max_captions", None)
    captions = grammar.training_captions()[:max_captions]
    synthesize(base_model, captions, data_dir, scorers=list(preset.scorers), cache_dir=default_cache_dir() / "training-data",
               **settings)


@dataclass
class _ModelJob:
    """Everything one model's training, sampling and scoring need (picklable: it runs in a worker process)."""

    model: EvaluatedModel
    options: RunOptions
    preset: Preset
    base_model: str
    data_dir: str | None
    stage: _Stages


def _train(job: _ModelJob) -> EvaluatedModel:
    """Train a method from the base (a job); the model returned holds its trained UNet."""
    from harness.store import Store
    from harness.trainer import train

    model = job.model
    job.stage(f"{model.method}: training")
    with Store(job.options.out / "results.db") as store:
        store.set_run_status(model.run_id, "running")
        pending: list[tuple[int, dict[str, float]]] = []

        def on_log(step: int, terms: dict[str, float]) -> None:
            pending.append((step, dict(terms)))
            if len(pending) >= 20:
                store.log_training(model.run_id, pending)
                pending.clear()

        try:
            result = train(
                model.method,
                base_model=job.base_model,
                data_dir=Path(job.data_dir),
                output_dir=job.options.out / "models" / model.method,
                preset=job.preset.name,
                overrides=model.overrides,
                on_log=on_log,
                resume=True,
                seed=job.options.seed,
            )
        except BaseException:
            with contextlib.suppress(HarnessError):  # (a full disk, say) what failed matters more than its record
                store.log_training(model.run_id, pending)
                store.set_run_status(model.run_id, "failed")
            raise
        store.log_training(model.run_id, pending)
        store.add_checkpoint(model.run_id, result.steps, str(result.unet_dir))
        compute = {"train_wall_s": round(result.wall_s, 1), "unet_evals_per_sample": result.unet_evals_per_sample}
        store.set_run_status(model.run_id, "trained", compute)
    return dataclasses.replace(model, unet=str(result.unet_dir), train=False)


def _evaluate(job: _ModelJob) -> None:
    """Generate the suites and score them: one model's evaluation (a job)."""
    from harness.store import Store

    with Store(job.options.out / "results.db") as store:
        job.stage(f"{job.model.method}: generation")
        manifests = _generate(job.model, job, store)
        job.stage(f"{job.model.method}: scoring")
        _score(job.model, manifests, job, store)


def load_suite(name: str, limit: int | None = None):
    """A registered suite, cut to its first ``limit`` prompts (a new, smaller suite with its own version)."""
    from harness.suites import Suite, get_suite

    suite = get_suite(name)
    if limit and len(suite) > limit:
        suite = Suite(name=suite.name, split=suite.split, prompts=suite.prompts[:limit], description=suite.description)
    return suite


def _generate(model: EvaluatedModel, job: _ModelJob, store) -> dict[str, list[dict]]:
    from harness.models import inference_device, load_pipeline
    from harness.sampling import generate

    options, preset = job.options, job.preset
    device, dtype = inference_device()
    pipe = load_pipeline(job.base_model, unet=model.unet, unet_subfolder=model.unet_subfolder, dtype=dtype,
                         device=device, vae=preset.vae)
    if model.method != BASE:
        from harness.trainer import resolve_config

        pipe = METHODS.get(model.method)(resolve_config(model.method, preset.name, model.overrides)).sampler(pipe)
    settings = preset.generation
    manifests = {}
    for name in options.suites or preset.suites:
        suite = load_suite(name, options.max_prompts or preset.max_prompts)
        print(f"   {model.method} / {suite.name} ({len(suite)} prompts)", flush=True)
        folder = Path("images") / model.method / suite.name
        rows = generate(
            pipe,
            suite,
            options.out / folder,
            images_per_prompt=options.images_per_prompt or settings.images_for(suite.name),
            batch_size=settings.batch_size,
            seed=settings.seed + options.seed,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            height=settings.height,
            width=settings.width,
            scheduler=settings.scheduler,
        )
        # The store's paths are relative to the results directory (the manifest's, to its folder).
        stored = [{**row, "path": str(folder / row["path"])} for row in rows]
        store.add_images(model.run_id, suite=suite.name, suite_version=suite.version, split=suite.split, rows=stored)
        manifests[suite.name] = rows
    del pipe
    return manifests


def _score(model: EvaluatedModel, manifests: dict[str, list[dict]], job: _ModelJob, store) -> None:
    from harness.scoring import get_scorer, score_images
    from harness.scoring.cache import ScoreCache

    options = job.options
    cache = ScoreCache(options.out / "cache" / "scores.sqlite")
    for scorer_name in options.scorers or job.preset.scorers:
        scorer = get_scorer(scorer_name)
        for suite_name, rows in manifests.items():
            folder = options.out / "images" / model.method / suite_name
            values = score_images(
                scorer,
                [folder / row["path"] for row in rows],
                [row["prompt"] for row in rows],
                [row["sha256"] for row in rows],
                cache=cache,
            )
            store.add_scores(
                model.run_id,
                suite=suite_name,
                rows=[
                    {
                        "prompt_id": row["prompt_id"],
                        "image_index": row["image_index"],
                        "scorer": scorer.name,
                        "version": scorer.version,
                        "scale": scorer.scale,
                        "value": value,
                    }
                    for row, value in zip(rows, values)
                ],
            )


def leaderboard(out: Path, base: str = BASE) -> list[dict]:
    """Leaderboard rows computed from a results directory's stored scores."""
    from harness.stats import leaderboard as compute
    from harness.store import Store

    db = Path(out) / "results.db"
    if not db.exists():
        raise HarnessError(f"no results in {out}: {db} does not exist (run `harness run --out {out}` first)")
    return compute(Store(db, readonly=True).scores_frame(), base=base)
