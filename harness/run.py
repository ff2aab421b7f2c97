"""`harness run`: train each method from one base, generate, score, store, rank.

The run carries out its plan (``harness.plan.planner``: every input checked and every model's config resolved once,
before anything is created).  Each method's training is one job, and each model's evaluation (the base's and
every trained method's: sample the suites, score the images; ``harness.evaluation.evaluate``) another (``harness.backends.jobs``,
each of one plan entry).  The jobs run side by side in worker processes (``harness.workers``) and write to
the one results database: first the base's evaluation, which needs no training data (the toy preset makes
the data in this process meanwhile), then the trainings, and each trained model's evaluation as soon as its
training ends.

Before the trainings, the data each method's published recipe needs is made here: DRO's
experts ranked by a reward, SmPO's pair scores (``harness.data.steps``, cached and resumable),
or the toy world's synthesized data.  A method whose recipe starts from another method's UNet
(SmPO on SD1.5 starts from SFT) is trained once that one is.  Which rewards shaped each method's
training data is recorded with its run (the leaderboard marks those metrics).

Every stage is idempotent (the trainer resumes from its checkpoints, generation
skips images already on disk with the right hash, scores are cached by image
hash and scorer version, store writes are keyed), so rerunning an interrupted
run does only what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from harness.api.environment import cache_dir, say
from harness.api.method import PublishedWeights
from harness.api.preset import Preset
from harness.api.registry import SCORERS
from harness.backends import Backend
from harness.backends.jobs import ModelJob
from harness.backends.local import LocalBackend
from harness.backends.ray import RayBackend
from harness.data import specs as data_specs
from harness.data.readers import training_captions
from harness.data.synthesis import synthesis_settings, synthesize
from harness.errors import HarnessError
from harness.evaluation import curves
from harness.evaluation.evaluate import BASE, get_or_create_run, recorded_model
from harness.evaluation.suites import caption_overlap
from harness.plan.locations import resolve_base_model

# `harness run` as a function (harness.api): its options and checks are the plan's
from harness.plan.planner import ModelEntry, Plan, RunOptions, recorded_runs, validate
from harness.plan.presets import get_preset, published_weights
from harness.progress import Stages as _Stages
from harness.results.layout import ResultsDir
from harness.results.stats import leaderboard as compute
from harness.results.stats import signals_by_method
from harness.results.store import Store
from harness.scoring import same_signal
from harness.scoring.environments import build_environments
from harness.train.trainer import train
from harness.workers import default_processes, one_cpu_thread, visible_gpus, worker_gpus


def run(options: RunOptions) -> list[dict]:
    """Run the whole comparison and return the leaderboard rows."""
    return run_validated(validate(options, get_preset(options.preset)))


def _scorers_used(plan: Plan) -> list[str]:
    """Every scorer the run calls: its evaluations' (curve points' too) and its data steps'."""
    protocols = [plan.protocol, *([plan.curve_protocol] if plan.curve_protocol else [])]
    names = [name for protocol in protocols for name in protocol.scorers]
    return names + [model.spec.scorer for model in plan.methods if getattr(model.spec, "scorer", None)]


def run_validated(plan: Plan) -> list[dict]:
    """Carry out the ``plan`` ``validate`` returned (the CLI validates before the libraries load)."""
    options, preset = plan.options, plan.preset
    out = options.out
    n_models = len(plan.models)
    gpus_per_job = max((model.processes for model in plan.methods if model.train), default=1)  # one per process
    processes = min(options.jobs or default_processes(n_models, gpus_per_job), n_models)
    if options.backend == "local":
        worker_gpus(visible_gpus(), processes, gpus_per_job)  # too few GPUs for the jobs at once: refused here
    # A scorer's own environment is installed before anything else: a failed install stops the run here, in one
    # line, with nothing made.
    build_environments(_scorers_used(plan), SCORERS)
    results = ResultsDir(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()

    if options.eval_every:
        _say_curve_cost(plan)
    stage("base model")
    base_model = resolve_base_model(plan.base_model)
    recorded_base = recorded_model(plan.base_model, results)
    store = Store(results.db)
    # One results directory is one experiment: a method's run is keyed by its name, and the store refuses
    # to resume it with other inputs (images/<method>/ would be mixed up).  Every run is made (or checked
    # against the stored one) before any heavy work.
    ids = {
        name: get_or_create_run(store, name, preset, recorded_base, options.seed, **config)
        for name, config in recorded_runs(plan).items()
    }

    def job(model: ModelEntry) -> ModelJob:
        return ModelJob(plan, model, ids[model.method], base_model, stage)

    base, methods = plan.models[0], plan.methods
    for model in methods:
        if model.init_from:
            say(
                f"   {model.method} starts from the UNet {model.init_from} trains on the same data (its recipe; "
                f"--set {model.method}.init_unet=DIR starts it from yours)"
            )
    _import_job_libraries()
    # Jobs start in the order they are submitted, as workers free up: the base's evaluation first
    # (it needs no training data, so it runs while the data is made here), then the trainings, and
    # each trained model's evaluation (and the trainings that start from it) as soon as it ends.
    with open_backend(options, processes, gpus_per_job) as pool:
        stage(f"{n_models} models: training, then generation and scoring, {pool.description}")
        pending = {pool.evaluate(job(base))}
        with one_cpu_thread(on_gpu=pool.gpus > 0):  # the data depends on no core count either
            if plan.synthesized:
                _synthesize(plan.preset, base_model, Path(plan.source), stage)
            signals = {
                model.method: _prepare_data(model, options, plan.source, stage) for model in methods if model.train
            }
        _record_signals(store, methods, ids, signals, preset)
        if plan.source:
            _record_overlap(store, plan, ids)
        trainings_running: set[Future] = set()

        def start_training(model: ModelEntry) -> None:
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
                        start_training(model.starting_from(trained.unet))
    return leaderboard(out)


def _say_curve_cost(plan: Plan) -> None:
    """Print, before the run starts, how many more images --eval-every makes and scores."""
    curve = plan.curve_protocol
    images = sum(len(curve.load_suite(s)) * curve.sampling(s)["images_per_prompt"] for s in curve.suites)
    points = {
        m.method: len(curves.curve_steps(m.config.max_steps, plan.options.eval_every))
        for m in plan.methods
        if m.train and m.evaluate
    }
    total = sum(points.values())
    say(
        f"   --eval-every {plan.options.eval_every}: {total} more evaluations "
        f"({', '.join(f'{m} {n}' for m, n in points.items())}) of {images} images each on "
        f"{', '.join(curve.suites)}: {total * images} images to generate and score (each method's last point "
        "is its final UNet again, whose scores come from the cache)"
    )


def open_backend(options: RunOptions, processes: int, gpus_per_job: int) -> Backend:
    """The backend ``options.backend`` names; ``processes``: the local pool's workers, with ``gpus_per_job`` GPUs
    each.  Chosen here, above the backends: they run ``harness.backends.jobs``, which reads the plan, whose checks
    include the backend's options."""
    if options.backend == "ray":
        return RayBackend(options.address)
    return LocalBackend(processes, gpus_per_job)


def train_alone(plan: Plan, *, resume: bool = True):
    """`harness train`: the plan's one method (``validate_training``'s) trained as `harness run` trains it (the
    same settings, data, data steps, seed and one CPU thread), into ``options.out`` (``final/unet``), without
    evaluation; data it makes (the toy world's synthesized data, DRO's experts) goes to ``options.out/data``.
    Returns the trainer's ``TrainResult``: for the same settings, weights byte-identical to the run's."""
    import torch
    from accelerate import PartialState

    options, (model,) = plan.options, plan.methods
    options.out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()
    base_model = resolve_base_model(plan.base_model)
    with one_cpu_thread(on_gpu=torch.cuda.is_available()):  # as a job of `harness run` trains
        # Under torchrun / accelerate launch the first process makes the data; the others then find it made.
        with PartialState().main_process_first():
            if plan.synthesized:
                _synthesize(plan.preset, base_model, Path(plan.source), stage)
            _prepare_data(model, options, plan.source, stage)
        stage(f"{model.method}: training")
        return train(
            model.method,
            config=model.config,
            base_model=base_model,
            data_dir=Path(model.data_dir),
            output_dir=options.out,
            resume=resume,
            seed=options.seed,
        )


def _prepare_data(model: ModelEntry, options: RunOptions, source: str, stage: _Stages) -> tuple[list[str], str]:
    """Make what the method's data spec needs from ``source``; return the rewards that shaped its data, and how."""
    synthesized = synthesis_settings(model.data_dir)
    if synthesized is not None:
        scorers = synthesized["scorers"]
        return sorted(
            {m for name in scorers for m in same_signal(name)}
        ), f"training data labelled and ranked by {', '.join(scorers)}"
    return data_specs.prepare(
        model.spec,
        source,
        model.data_dir,
        options.scorer_options.get(model.spec.scorer or "", {}),
        lambda what: stage(f"{model.method}: {what}"),
    )


def _import_job_libraries() -> None:
    """Import here, once, what every job imports: forked workers inherit it (each spent ~2 s of CPU on it)."""
    import accelerate  # noqa: F401  (the trainer)
    from diffusers import StableDiffusionPipeline  # noqa: F401  (loading and sampling; imports the models)
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (the trainer's logs)


def _record_signals(
    store, methods: Sequence[ModelEntry], ids: dict[str, int], signals: dict[str, tuple[list[str], str]], preset: Preset
) -> None:
    """Record, per run, the metrics whose reward shaped its training data (the leaderboard's † marks)."""
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
            store.set_training_signals(ids[model.method], sorted(set(metrics)), why)


def _record_overlap(store, plan: Plan, ids: dict[str, int]) -> None:
    """How many prompts of each unseen suite a model's training data has captions for (0 is what "unseen" promises)."""
    unseen = [suite for suite in map(plan.protocol.load_suite, plan.protocol.suites) if suite.split == "unseen"]
    counts: dict[tuple[str, str], int] = {}
    for model in plan.models:
        if model.data_dir is None:
            continue
        for suite in unseen:
            key = (model.data_dir, suite.name)
            if key not in counts:
                counts[key] = caption_overlap(suite, training_captions(model.data_dir))
                if counts[key]:
                    say(
                        f"   warning: {counts[key]} prompts of unseen suite {suite.name!r} appear in the "
                        f"training captions of {model.data_dir}"
                    )
            store.set_overlap(ids[model.method], suite=suite.name, n_overlap=counts[key])


def _synthesize(preset: Preset, base_model: str, data_dir: Path, stage: _Stages) -> None:
    stage("training data (base samples labelled by the rewards)")
    if preset.training_captions is None:
        raise HarnessError(f"preset {preset.name!r} synthesizes its data but names no training captions")
    settings = dict(preset.synthesize)
    max_captions = settings.pop("max_captions", None)
    scorers = settings.pop("scorers", list(preset.scorers))
    captions = preset.training_captions()[:max_captions]
    synthesize(base_model, captions, data_dir, scorers=scorers, cache_dir=cache_dir() / "training-data", **settings)


def leaderboard(out: Path, base: str = BASE, by: Sequence[str] = ()) -> list[dict]:
    """Leaderboard rows computed from a results directory's stored scores and training signals
    (``by``: ``harness.results.stats.leaderboard``'s, e.g. ``["category"]``)."""
    db = ResultsDir(out).db
    if not db.exists():
        raise HarnessError(f"no results in {out}: {db} does not exist (run `harness run --out {out}` first)")
    with Store(db, readonly=True) as store:
        scores, signals = store.scores_frame(), signals_by_method(store.training_signals_frame())
    return compute(curves.split_snapshots(scores)[0], base=base, signals=signals, by=by)
