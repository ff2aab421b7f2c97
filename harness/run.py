"""`harness run`: train each method from one base, generate, score, store, rank.

Each method's training is one job, and each model's evaluation (the base's and every trained
method's: sample the suites, score the images; ``harness.evaluate``) another.  The jobs run side by side in worker
processes (``harness.workers``) and write to the one results database: first the base's
evaluation, which needs no training data (the toy preset makes the data in this process
meanwhile), then the trainings, and each trained model's evaluation as soon as its training ends.

Before the trainings, the data each method's published recipe needs is made here: DRO's
experts ranked by a reward, SmPO's pair scores (``harness.data_steps``, cached and resumable),
or the toy world's synthesized data.  A method whose recipe starts from another method's UNet
(SmPO on SD1.5 starts from SFT) is trained once that one is.  Which rewards shaped each method's
training data is recorded with its run (the leaderboard marks those metrics).

Every stage is idempotent (the trainer resumes from its checkpoints, generation
skips images already on disk with the right hash, scores are cached by image
hash and scorer version, store writes are keyed), so rerunning an interrupted
run does only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import curves, data_specs
from harness.api.method import PublishedWeights
from harness.api.preset import Preset
from harness.api.registry import METHODS, SCORERS
from harness.backends import check_backend, open_backend
from harness.config import is_built_model, require_directory_or_nothing, require_existing_path, resolve_base_model
from harness.data_check import check_data
from harness.errors import HarnessError
from harness.evaluate import (BASE, Checkpoint, Protocol, check_prompts_scorable, check_run, check_sampler_fits,
                              check_scorer_options, check_suites, evaluate, get_or_create_run, load_suite,
                              recorded_model, unet_subfolder)
from harness.presets import get_preset, no_published_weights, published_weights
from harness.progress import Stages as _Stages, say
from harness.results import ResultsDir
from harness.suites import check_suite_name

EVERY_METHOD = "*"  # RunOptions.overrides key: settings for every method trained (--set FIELD=VALUE)


@dataclass
class RunOptions:
    methods: list[str]
    out: Path
    preset: str | None = None  # None: the default preset (the toy world's)
    model: str | None = None
    data: str | None = None
    suites: list[str] | None = None
    scorers: list[str] | None = None
    max_prompts: int | None = None
    images_per_prompt: int | None = None
    steps: int | None = None  # sampler steps of the evaluation (None: the preset's protocol)
    vae: str | None = None  # replacement VAE for training and generation (None: the preset's, e.g. SDXL's fp16 fix)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method or EVERY_METHOD -> {field: value}
    pretrained: bool = False
    seed: int = 0
    jobs: int | None = None  # jobs (trainings, evaluations) at once (None: one per core on a CPU, one per GPU)
    scorer_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # scorer -> get_scorer keywords
    unets: dict[str, str] = field(default_factory=dict)  # --pretrained: method -> its UNet, instead of the preset's
    eval_every: int | None = None  # evaluate each trained method's UNet every N steps too (harness.curves)
    eval_suites: list[str] | None = None  # ... on these of the run's suites (None: all of them)
    backend: str = "local"  # where the jobs run: "local" worker processes or a "ray" cluster (harness.backends)
    address: str | None = None  # --backend ray: the cluster ("auto", HOST:PORT; None: start one on this machine)
    skip_bad_images: bool = False  # leave out the data's rows with an unreadable image instead of refusing the data


@dataclass
class EvaluatedModel:
    """One row of the comparison: the base or a method's trained (or published) UNet."""

    method: str
    run_id: int
    unet: str | None = None
    unet_subfolder: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    train: bool = False  # still to be trained (then ``unet`` is set to the result)
    evaluate: bool = True  # False: trained only as another method's starting point
    data_dir: str | None = None  # what its training reads
    spec: Any = None  # its method's harness.api.DataSpec: what it trains on, and the reward its data must carry
    init_from: str | None = None  # the method whose trained UNet it starts from


def validate(options: RunOptions, preset: Preset) -> None:
    """Fail on any bad input before anything is created or any heavy work starts (cheap checks first)."""
    _validate_counts(options)
    check_backend(options)
    curves.validate(options, preset)
    _validate_locations(options)
    _validate_names(options, preset)
    _validate_configs(options, preset)
    if not options.pretrained:  # the data's mistakes, whatever the preset's models (decoded once; cached)
        check_data(options.data or preset.data, skip_bad_images=options.skip_bad_images)
    check_models_available(options, preset)
    # A suite file's mistakes, a hub suite not available here, a prompt a scorer cannot read.
    suites = [load_suite(name, options.max_prompts or preset.max_prompts) for name in options.suites or preset.suites]
    check_prompts_scorable(suites, options.scorers or preset.scorers)
    _check_recorded(options, preset)


def _check_recorded(options: RunOptions, preset: Preset) -> None:
    """A results directory resumes only with the inputs it was made with: each run's recorded base model, data
    (by content) and settings, and each suite's prompts (``check_suites``)."""
    from harness.store import Store

    results = ResultsDir(options.out)
    if not results.db.exists():
        return
    source = training_source(options, preset)
    trainings = [] if options.pretrained else _plan_trainings(options, preset, source, _synthesized(options, preset))
    base = recorded_model(options.model or preset.base_model, results)
    with Store(results.db, readonly=True) as store:
        for name, config in _recorded_runs(options, preset, trainings, source).items():
            check_run(store, name, preset, base, options.seed, **config)
        check_suites(store, [load_suite(name, options.max_prompts or preset.max_prompts)
                             for name in options.suites or preset.suites], results)


def training_source(options: RunOptions, preset: Preset) -> str | None:
    """Where the trainings read from: ``--data``, the preset's data set, or the results directory's ``data/`` where
    the preset synthesizes its data (absolute: the run records it relative to the results directory)."""
    if options.pretrained:
        return None
    if _synthesized(options, preset):
        return str(ResultsDir(options.out).data.absolute())
    return options.data or preset.data


def _synthesized(options: RunOptions, preset: Preset) -> bool:
    return not options.pretrained and (options.data or preset.data) == "synthesize"


def _recorded_runs(options: RunOptions, preset: Preset, trainings: list[EvaluatedModel],
                   source: str | None) -> dict[str, dict]:
    """What each run records besides its base model and seed: a published UNet, or its training data and
    settings; every location as ``harness.identity`` records it (by content, or relative to the results)."""
    from harness.identity import LOCATED_SETTINGS, recorded_location

    root = ResultsDir(options.out).root
    runs: dict[str, dict] = {BASE: {}}
    if options.pretrained:
        for method in options.methods:
            runs[method] = {"pretrained": recorded_location(published_unet(options, preset, method)[0], root)}
    for model in trainings:
        overrides = {key: recorded_location(value, root) if key in LOCATED_SETTINGS and value else value
                     for key, value in model.overrides.items()}
        runs[model.method] = {"data": recorded_location(source, root) if source else None, "overrides": overrides}
    return runs


def _validate_counts(options: RunOptions) -> None:
    counts = {"--max-prompts": options.max_prompts, "--images-per-prompt": options.images_per_prompt,
              "--steps": options.steps, "--jobs": options.jobs, "--eval-every": options.eval_every}
    for option, value in counts.items():
        if value is not None and value < 1:
            raise HarnessError(f"{option} must be at least 1, not {value}")


def protocol_of(options: RunOptions, preset: Preset) -> Protocol:
    """The run's evaluation protocol: every model's, and every point's of --eval-every."""
    return Protocol.of(preset, options.suites, options.scorers, max_prompts=options.max_prompts,
                       images_per_prompt=options.images_per_prompt, steps=options.steps, seed=options.seed,
                       vae=options.vae, scorer_options=options.scorer_options)


def _validate_locations(options: RunOptions) -> None:
    from harness.store import Store

    require_directory_or_nothing(options.out, "--out")
    db = ResultsDir(options.out).db
    if db.exists():  # a corrupt, damaged or foreign file is refused before anything is added beside it
        with Store(db, readonly=True) as store:
            store.check_intact()
    for option, location in (("--model", options.model), ("--data", options.data)):
        if location is not None:
            require_existing_path(location, option)


def _validate_names(options: RunOptions, preset: Preset) -> None:
    for name in options.methods:
        if name == BASE:
            raise HarnessError(f"{BASE!r} is the untrained base model, always evaluated; it is not a method")
        METHODS.get(name)
        if options.pretrained and name not in published_weights(preset.name) and name not in options.unets:
            raise HarnessError(no_published_weights(preset, name))
    for name in options.suites or preset.suites:
        check_suite_name(name)
    for name in options.scorers or preset.scorers:
        SCORERS.get(name)
    for name, keywords in options.scorer_options.items():
        check_scorer_options(name, keywords)
    for name in options.unets:
        if not options.pretrained:
            raise HarnessError("--unet gives the location of a published UNet: use it with --pretrained")
        if name not in options.methods:
            raise HarnessError(f"--unet names {name!r}, which is not among the methods run")


def published_unet(options: RunOptions, preset: Preset, method: str) -> tuple[str, str | None]:
    """(location, subfolder) of ``method``'s UNet under ``--pretrained``: the preset's published one, or
    ``--unet``'s: a UNet directory, or a repository laid out as the published ones (a local download
    or a hub id) with the UNet in ``unet/``."""
    given = options.unets.get(method)
    if given is None:
        weights = published_weights(preset.name)[method]
        return weights.location, weights.subfolder
    return given, unet_subfolder(given)


def check_models_available(options: RunOptions, preset: Preset) -> None:
    """Every model the run will load must be there before anything is created: a missing download
    fails at once, in one line saying what to download, and leaves no half-made results."""
    from harness.families import check_network_fits
    from harness.models import check_model_available

    base = options.model or preset.base_model
    if not is_built_model(base):
        check_model_available(base, config_file="model_index.json", what="base model", pass_as="--model DIR")
    check_sampler_fits(resolve_base_model(base), preset, shown=base)
    if options.pretrained:
        for method in options.methods:
            location, subfolder = published_unet(options, preset, method)
            check_model_available(location, config_file="config.json", subfolder=subfolder,
                                  what=f"{method}'s published UNet", pass_as=f"--unet {method}=DIR")
            check_network_fits(base, location, what=f"{method}'s UNet", subfolder=subfolder)
    for method, settings in options.overrides.items():
        if settings.get("init_unet"):  # the network a training starts from (--set [METHOD.]init_unet=DIR)
            key = "init_unet" if method == EVERY_METHOD else f"{method}.init_unet"
            require_existing_path(str(settings["init_unet"]), f"--set {key}")
            check_network_fits(base, str(settings["init_unet"]), what=f"--set {key}")


def _validate_configs(options: RunOptions, preset: Preset) -> None:
    """Every method's config as it will train (and the methods a recipe trains first): the preset's settings
    and --set values, checked by type and range."""
    if not options.pretrained:
        _plan_trainings(options, preset, source=None, synthesized=False)


def run(options: RunOptions) -> list[dict]:
    """Run the whole comparison and return the leaderboard rows."""
    preset = get_preset(options.preset)
    validate(options, preset)
    return run_validated(options, preset)


def run_validated(options: RunOptions, preset: Preset) -> list[dict]:
    """``run`` for options ``validate`` has passed (the CLI validates before the libraries load)."""
    from harness.store import Store
    from harness.workers import default_processes, one_cpu_thread

    out = options.out
    results = ResultsDir(out)
    source = training_source(options, preset)
    synthesized = _synthesized(options, preset)
    trainings = [] if options.pretrained else _plan_trainings(options, preset, source, synthesized)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()

    if options.eval_every:
        curves.say_cost(options, preset, trainings)
    stage("base model")
    base_model = resolve_base_model(options.model or preset.base_model)
    recorded_base = recorded_model(options.model or preset.base_model, results)
    store = Store(results.db)
    # One results directory is one experiment: a method's run is keyed by its name, and the store refuses
    # to resume it with other inputs (images/<method>/ would be mixed up).  Every run is made (or checked
    # against the stored one) before any heavy work.
    recorded = _recorded_runs(options, preset, trainings, source)
    ids = {name: get_or_create_run(store, name, preset, recorded_base, options.seed, **config)
           for name, config in recorded.items()}

    def job(model: EvaluatedModel) -> _ModelJob:
        return _ModelJob(model, options, preset, base_model, stage)

    base = EvaluatedModel(BASE, ids[BASE], data_dir=source)
    if options.pretrained:
        methods = []
        for method in options.methods:
            unet, subfolder = published_unet(options, preset, method)
            methods.append(EvaluatedModel(method, ids[method], unet, subfolder))
    else:
        methods = [dataclasses.replace(model, run_id=ids[model.method]) for model in trainings]

    for model in methods:
        if model.init_from:
            say(f"   {model.method} starts from the UNet {model.init_from} trains on the same data (its recipe; "
                f"--set {model.method}.init_unet=DIR starts it from yours)")
    n_models = len(methods) + 1
    processes = min(options.jobs or default_processes(n_models), n_models)
    _import_job_libraries()
    # Jobs start in the order they are submitted, as workers free up: the base's evaluation first
    # (it needs no training data, so it runs while the data is made here), then the trainings, and
    # each trained model's evaluation (and the trainings that start from it) as soon as it ends.
    with open_backend(options, processes) as pool:
        stage(f"{n_models} models: training, then generation and scoring, {pool.description}")
        pending = {pool.evaluate(job(base))}
        with one_cpu_thread(on_gpu=pool.gpus > 0):  # the data depends on no core count either
            if synthesized:
                _synthesize(options, preset, base_model, Path(source), stage)
            signals = {model.method: _prepare_data(model, options, source, stage) for model in methods if model.train}
        _record_signals(store, methods, signals, preset)
        if source:
            _record_overlap(store, [base, *methods], options, preset)
        trainings_running: set = set()

        def start_training(model: EvaluatedModel) -> None:
            future = pool.train(job(model))
            trainings_running.add(future)
            pending.add(future)

        for model in methods:
            if model.train and not model.init_from:
                start_training(model)
        pending |= {pool.evaluate(job(model)) for model in methods if not model.train}
        while pending:
            for future in pool.wait_any(pending):
                pending.remove(future)
                if future not in trainings_running:
                    continue
                trained = future.result()
                if trained.evaluate:
                    pending.add(pool.evaluate(job(trained)))
                for model in methods:
                    if model.train and model.init_from == trained.method:
                        start_training(dataclasses.replace(model, overrides={**model.overrides, "init_unet": trained.unet}))
    return leaderboard(out)


def validate_training(options: RunOptions, preset: Preset) -> None:
    """`harness train`'s checks, before anything is created: those of `harness run` that concern its one method's
    training (locations, names, the config with every --set value, the base model), and its starting UNet."""
    from harness.trainer import require_init_unet, resolve_config

    _validate_locations(options)
    _validate_names(options, preset)
    trained = _trained_alone(_plan_trainings(options, preset, source=None, synthesized=False), options)
    require_init_unet(trained.method, resolve_config(trained.method, preset.name, trained.overrides))
    check_data(options.data or preset.data, skip_bad_images=options.skip_bad_images)
    check_models_available(options, preset)


def train_alone(options: RunOptions, preset: Preset, *, resume: bool = True):
    """`harness train`: ``options.methods``' one method trained as `harness run` trains it (the same plan and
    settings, data, data steps, seed and one CPU thread), into ``options.out`` (``final/unet``), without
    evaluation; data it makes (the toy world's synthesized data, DRO's experts) goes to ``options.out/data``.
    Returns the trainer's ``TrainResult``: for the same settings, weights byte-identical to the run's."""
    import torch
    from accelerate import PartialState

    from harness.trainer import train
    from harness.workers import one_cpu_thread

    data = options.data or preset.data
    source = str(ResultsDir(options.out).data) if data == "synthesize" else data
    model = _trained_alone(_plan_trainings(options, preset, source, data == "synthesize"), options)
    options.out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()
    base_model = resolve_base_model(options.model or preset.base_model)
    with one_cpu_thread(on_gpu=torch.cuda.is_available()):  # as a job of `harness run` trains
        # Under torchrun / accelerate launch the first process makes the data; the others then find it made.
        with PartialState().main_process_first():
            if data == "synthesize":
                _synthesize(options, preset, base_model, Path(source), stage)
            _prepare_data(model, options, source, stage)
        stage(f"{model.method}: training")
        return train(model.method, base_model=base_model, data_dir=Path(model.data_dir), output_dir=options.out,
                     preset=preset.name, overrides=model.overrides, resume=resume, seed=options.seed)


def _trained_alone(planned: list[EvaluatedModel], options: RunOptions) -> EvaluatedModel:
    """The one method `harness train` trains (not the one its recipe would start from: init_unet gives that)."""
    return next(model for model in planned if model.method == options.methods[0])


def _plan_trainings(options: RunOptions, preset: Preset, source: str | None, synthesized: bool) -> list[EvaluatedModel]:
    """The methods to train, each with its resolved settings and data, every --set value checked; a method
    whose recipe starts from another's UNet brings that one along (trained, not evaluated) unless asked for."""
    from harness.trainer import resolve_config

    planned: dict[str, EvaluatedModel] = {}

    def plan(method: str, evaluate: bool) -> None:
        overrides = {**({"vae": options.vae} if options.vae else {}), **options.overrides.get(EVERY_METHOD, {}),
                     **options.overrides.get(method, {})}
        config = resolve_config(method, preset.name, overrides)
        starts_from = None if config.init_unet else config.init_method  # a UNet of the user's replaces the chain
        if starts_from and starts_from not in planned:
            plan(starts_from, evaluate=starts_from in options.methods)
        spec = METHODS.get(method)(config).data_spec()
        data_dir = data_specs.training_source(spec, source, ResultsDir(options.out).data, synthesized) if source else source
        planned[method] = EvaluatedModel(method, run_id=-1, overrides=overrides, train=True, evaluate=evaluate,
                                         data_dir=data_dir, spec=spec, init_from=starts_from)

    for method in options.methods:
        if method not in planned:
            plan(method, evaluate=True)
    unknown = set(options.overrides) - {EVERY_METHOD} - set(planned)
    if unknown:
        raise HarnessError(f"--set names methods that are not trained: {', '.join(sorted(unknown))}")
    return list(planned.values())


def _prepare_data(model: EvaluatedModel, options: RunOptions, source: str, stage: "_Stages") -> tuple[list[str], str]:
    """Make what the method's data spec needs from ``source``; return the rewards that shaped its data, and how."""
    from harness.preference_data import synthesis_settings
    from harness.scoring import same_signal

    synthesized = synthesis_settings(model.data_dir)
    if synthesized is not None:
        scorers = synthesized["scorers"]
        return sorted({m for name in scorers for m in same_signal(name)}), \
            f"training data labelled and ranked by {', '.join(scorers)}"
    return data_specs.prepare(model.spec, source, model.data_dir, options.scorer_options.get(model.spec.scorer or "", {}),
                              lambda what: stage(f"{model.method}: {what}"))


def _import_job_libraries() -> None:
    """Import here, once, what every job imports: forked workers inherit it (each spent ~2 s of CPU on it)."""
    import accelerate  # noqa: F401  (the trainer)
    from diffusers import StableDiffusionPipeline  # noqa: F401  (loading and sampling; imports the models)
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (the trainer's logs)


def _record_signals(store, methods: list[EvaluatedModel], signals: dict[str, tuple[list[str], str]],
                    preset: Preset) -> None:
    """Record, per run, the metrics whose reward shaped its training data (the leaderboard's † marks)."""
    from harness.scoring import same_signal

    for model in methods:
        if model.train:
            metrics, why = signals[model.method]
            if model.init_from:  # what shaped the UNet it starts from shaped it too
                more, also = signals[model.init_from]
                metrics, why = metrics + more, "; ".join(filter(None, [why, also]))
        elif published_weights(preset.name).get(model.method, PublishedWeights("")).signal:
            weights = published_weights(preset.name)[model.method]
            metrics, why = same_signal(weights.signal), weights.how
        else:
            continue
        if metrics:
            store.set_training_signals(model.run_id, sorted(set(metrics)), why)


def _record_overlap(store, models: list[EvaluatedModel], options: RunOptions, preset: Preset) -> None:
    """How many prompts of each unseen suite a model's training data has captions for (0 is what "unseen" promises)."""
    from harness.data import training_captions
    from harness.suites import caption_overlap

    unseen = [suite for suite in (load_suite(name, options.max_prompts or preset.max_prompts)
                                  for name in options.suites or preset.suites) if suite.split == "unseen"]
    counts: dict[tuple[str, str], int] = {}
    for model in models:
        if model.data_dir is None:
            continue
        for suite in unseen:
            key = (model.data_dir, suite.name)
            if key not in counts:
                counts[key] = caption_overlap(suite, training_captions(model.data_dir))
                if counts[key]:
                    say(f"   warning: {counts[key]} prompts of unseen suite {suite.name!r} appear in the "
                        f"training captions of {model.data_dir}")
            store.set_overlap(model.run_id, suite=suite.name, n_overlap=counts[key])


def _synthesize(options: RunOptions, preset: Preset, base_model: str, data_dir: Path, stage: _Stages) -> None:
    from harness.models import default_cache_dir
    from harness.preference_data import synthesize

    stage("training data (base samples labelled by the rewards)")
    if preset.training_captions is None:
        raise HarnessError(f"preset {preset.name!r} synthesizes its data but names no training captions")
    settings = dict(preset.synthesize)
    max_captions = settings.pop("max_captions", None)
    scorers = settings.pop("scorers", list(preset.scorers))
    captions = preset.training_captions()[:max_captions]
    synthesize(base_model, captions, data_dir, scorers=scorers, cache_dir=default_cache_dir() / "training-data", **settings)


@dataclass
class _ModelJob:
    """Everything one model's training, sampling and scoring need (picklable: it runs in a worker process)."""

    model: EvaluatedModel
    options: RunOptions
    preset: Preset
    base_model: str
    stage: _Stages


def _train(job: _ModelJob) -> EvaluatedModel:
    """Train a method from the base (a job); the model returned holds its trained UNet."""
    from harness.compute import JobClock
    from harness.store import Store
    from harness.trainer import train

    model = job.model
    job.stage(f"{model.method}: training")
    clock = JobClock()
    results = ResultsDir(job.options.out)
    with Store(results.db) as store:
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
                data_dir=Path(model.data_dir),
                output_dir=results.model(model.method),
                preset=job.preset.name,
                overrides=model.overrides,
                on_log=on_log,
                resume=True,
                seed=job.options.seed,
                snapshot_every=(job.options.eval_every or 0) if model.evaluate else 0,
            )
        except BaseException:
            with contextlib.suppress(HarnessError):  # (a full disk, say) what failed matters more than its record
                store.log_training(model.run_id, pending)
                store.add_compute(model.run_id, clock.figures("train"))
                store.set_run_status(model.run_id, "failed")
            raise
        store.log_training(model.run_id, pending)
        store.add_compute(model.run_id, clock.figures("train"))
        store.add_checkpoint(model.run_id, result.steps, results.relative(result.unet_dir))
        # A UNet trained only for another method to start from has no evaluation to wait for.
        store.set_run_status(model.run_id, "trained" if model.evaluate else "done",
                             {"unet_evals_per_sample": result.unet_evals_per_sample,
                              "training_data": result.data_summary})
    return dataclasses.replace(model, unet=str(result.unet_dir), train=False)


def _evaluate(job: _ModelJob, evaluate_one: Callable[..., None] = evaluate) -> None:
    """Generate the suites and score them: one model's evaluation (a job), and with --eval-every its UNets of
    the steps between.  ``evaluate_one``: how one checkpoint is evaluated, with ``harness.evaluate.evaluate``'s
    signature (the Ray backend passes its own, which runs that one's parts on its workers)."""
    model, options = job.model, job.options
    checkpoint = Checkpoint(job.base_model, unet=model.unet, unet_subfolder=model.unet_subfolder,
                            method=None if model.method == BASE else model.method, overrides=model.overrides)
    evaluate_one(model.method, model.run_id, checkpoint, protocol_of(options, job.preset), ResultsDir(options.out),
                 job.stage)
    if options.eval_every and model.method != BASE:
        curves.evaluate_job(job, checkpoint, evaluate_one)


def leaderboard(out: Path, base: str = BASE, by: Sequence[str] = ()) -> list[dict]:
    """Leaderboard rows computed from a results directory's stored scores and training signals
    (``by``: ``harness.stats.leaderboard``'s, e.g. ``["category"]``)."""
    from harness.stats import leaderboard as compute, signals_by_method
    from harness.store import Store

    db = ResultsDir(out).db
    if not db.exists():
        raise HarnessError(f"no results in {out}: {db} does not exist (run `harness run --out {out}` first)")
    with Store(db, readonly=True) as store:
        scores, signals = store.scores_frame(), signals_by_method(store.training_signals_frame())
    return compute(curves.split_snapshots(scores)[0], base=base, signals=signals, by=by)
