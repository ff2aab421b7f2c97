"""The plan of `harness run` and `harness train`: what the command will do, checked and built once, then frozen.

``validate`` (`harness run`) and ``validate_training`` (`harness train`) check every input, cheap checks first,
before anything is created, and return the ``Plan``: every model's resolved config (``harness.train.trainer.
resolve_config``, called once per model), its data and where each of its settings comes from, the preset object,
the evaluation protocol and the scorers, and the models in the order their jobs start (the base first; a training
that starts from another method's UNet after that one).  Everything after reads the plan and resolves nothing:
the run (``harness.run``), its jobs (``harness.backends.jobs``), the backends, --eval-every (``harness.evaluation.curves``), and what
the store records of each run (``recorded_runs``).  `harness run --dry-run` prints it (``describe``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.api.data import Online
from harness.api.environment import require_existing_path
from harness.api.preset import Preset
from harness.api.registry import METHODS, SCORERS
from harness.data import specs as data_specs
from harness.data.check import check_data
from harness.errors import HarnessError
from harness.evaluation import curves
from harness.evaluation.evaluate import (
    BASE,
    Protocol,
    check_prompts_scorable,
    check_run,
    check_sampler_fits,
    check_scorer_options,
    check_suites,
    recorded_model,
    unet_subfolder,
)
from harness.evaluation.suites import check_suite_name
from harness.models.families import check_network_fits, configured_latent_shape
from harness.models.loading import check_model_available
from harness.plan.locations import is_built_model, require_directory_or_nothing, resolve_base_model
from harness.plan.presets import no_published_weights, published_weights
from harness.results.identity import LOCATED_SETTINGS, recorded_location
from harness.results.layout import ResultsDir
from harness.results.store import Store
from harness.train import trainer  # trainer.resolve_config read at each call: the tests count calls
from harness.train.features import CacheEstimate, feature_cache_dir, free_space, samples_per_step
from harness.train.trainer import method_preset_entry, require_init_unet

BACKENDS = ("local", "ray")  # where the jobs run: harness.backends
EVERY_METHOD = "*"  # RunOptions.overrides key: settings for every method trained (--set FIELD=VALUE)
# The --set key of a training's process count: where it runs, not a setting of its config (the trainer reads its
# process group), so not part of what a run or a checkpoint records.
PROCESSES = "processes"


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
    eval_every: int | None = None  # evaluate each trained method's UNet every N steps too (harness.evaluation.curves)
    eval_suites: list[str] | None = None  # ... on these of the run's suites (None: all of them)
    backend: str = "local"  # where the jobs run: "local" worker processes or a "ray" cluster (harness.backends)
    address: str | None = None  # --backend ray: the cluster ("auto", HOST:PORT; None: start one on this machine)
    skip_bad_images: bool = False  # leave out the data's rows with an unreadable image instead of refusing the data
    train_processes: int = 1  # data-parallel processes per training (--set METHOD.processes=N for one method)


@dataclass(frozen=True)
class ModelEntry:
    """One model of the plan (one row of the comparison): the base, a method to train, or a published UNet."""

    method: str  # a method's name, or BASE
    config: Any = None  # TrainConfig: the method's resolved settings (its sampler's too); None: the base
    overrides: Mapping[str, Any] = field(default_factory=dict)  # settings given beside the preset's (--vae, --set)
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> where its value comes from (``_sources``)
    train: bool = False  # to be trained (then its evaluation's ``unet`` is the training's result)
    evaluate: bool = True  # False: trained only as another method's starting point
    data_dir: str | None = None  # what its training reads
    spec: Any = None  # its method's harness.api.DataSpec: what it trains on, and the reward its data must carry
    init_from: str | None = None  # the method whose trained UNet it starts from
    unet: str | None = None  # the UNet evaluated: a published one, or (set by its training job) the trained one
    unet_subfolder: str | None = None
    processes: int = 1  # data-parallel processes its training runs as (--train-processes, --set METHOD.processes)
    grad_accum: int = 1  # forward/backward passes per optimizer step on each process (``trainer.accumulation``)

    def starting_from(self, unet: str) -> ModelEntry:
        """This training with ``unet`` (its ``init_from`` method's, trained) as its start."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, init_unet=unet))


@dataclass(frozen=True)
class Plan:
    """Everything a run does, decided before anything is created."""

    options: RunOptions
    preset: Preset
    protocol: Protocol  # every model's evaluation protocol
    curve_protocol: Protocol | None  # --eval-every's points': the run's on the --eval-suites (None: no points)
    source: str | None  # where the trainings read from (``training_source``; None: nothing is trained)
    synthesized: bool  # the preset synthesizes its data into ``source`` (the results directory's data/)
    models: tuple[ModelEntry, ...]  # the base first, then each method; a training after the one it starts from

    @property
    def base_model(self) -> str:
        """The base model as given (a built model's name, a hub id or a directory)."""
        return self.options.model or self.preset.base_model

    @property
    def methods(self) -> tuple[ModelEntry, ...]:
        return self.models[1:]


def validate(options: RunOptions, preset: Preset) -> Plan:
    """Fail on any bad input before anything is created or any heavy work starts (cheap checks first); return the
    run's plan."""
    _validate_counts(options)
    _validate_backend(options)
    _validate_curves(options, preset)
    _validate_locations(options)
    _validate_names(options, preset)
    source = training_source(options, preset)
    trainings = [] if options.pretrained else plan_trainings(options, preset, source, _synthesized(options, preset))
    if not options.pretrained:  # the data's mistakes, whatever the preset's models (decoded once; cached)
        check_data(options.data or preset.data, skip_bad_images=options.skip_bad_images)
    check_models_available(options, preset)
    protocol = protocol_of(options, preset)
    # A suite file's mistakes, a hub suite not available here, a prompt a scorer cannot read.
    suites = [protocol.load_suite(name) for name in protocol.suites]
    check_prompts_scorable(suites, protocol.scorers)
    plan = _plan(options, preset, protocol, source, trainings)
    _check_recorded(plan, suites)
    return plan


def validate_training(options: RunOptions, preset: Preset) -> Plan:
    """`harness train`'s checks, before anything is created: those of `harness run` that concern its one method's
    training (locations, names, the config with every --set value, the base model), and its starting UNet; return
    the plan of that one training (``Plan.methods``' one entry; data it makes goes to ``options.out/data``)."""
    _validate_locations(options)
    _validate_names(options, preset)
    synthesized = _synthesized(options, preset)
    source = str(ResultsDir(options.out).data) if synthesized else options.data or preset.data
    # Not the method its recipe would start from: init_unet gives that.
    trained = next(
        model for model in plan_trainings(options, preset, source, synthesized) if model.method == options.methods[0]
    )
    require_init_unet(trained.method, trained.config)
    if trained.processes != 1:
        raise HarnessError(
            "harness train runs in the processes it is started in: launch it with `torchrun --nproc_per_node N -m "
            "harness.cli train ...` instead of --set processes=N"
        )
    check_data(options.data or preset.data, skip_bad_images=options.skip_bad_images)
    check_models_available(options, preset)
    return _plan(options, preset, protocol_of(options, preset), source, [trained])


def _plan(
    options: RunOptions, preset: Preset, protocol: Protocol, source: str | None, trainings: list[ModelEntry]
) -> Plan:
    if options.pretrained:  # a published UNet is sampled through its method's sampler, with its preset settings
        methods = []
        for method in options.methods:
            unet, subfolder = published_unet(options, preset, method)
            config = trainer.resolve_config(method, preset.name)
            sources = _sources(method, preset, config, vae=None, every={}, own={})
            methods.append(ModelEntry(method, config, sources=sources, unet=unet, unet_subfolder=subfolder))
    else:
        methods = trainings
    curve = None
    if options.eval_every:
        curve = dataclasses.replace(protocol, suites=tuple(options.eval_suites)) if options.eval_suites else protocol
    return Plan(
        options,
        preset,
        protocol,
        curve,
        source,
        _synthesized(options, preset),
        (ModelEntry(BASE, data_dir=source), *methods),
    )


def _check_recorded(plan: Plan, suites: list) -> None:
    """A results directory resumes only with the inputs it was made with: each run's recorded base model, data
    (by content) and settings, and each suite's prompts (``check_suites``)."""
    results = ResultsDir(plan.options.out)
    if not results.db.exists():
        return
    base = recorded_model(plan.base_model, results)
    with Store(results.db, readonly=True) as store:
        for name, config in recorded_runs(plan).items():
            check_run(store, name, plan.preset, base, plan.options.seed, **config)
        check_suites(store, suites, results)


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


def recorded_runs(plan: Plan) -> dict[str, dict]:
    """What each run records besides its base model and seed: a published UNet, or its training data and
    settings; every location as ``harness.results.identity`` records it (by content, or relative to the results)."""
    root = ResultsDir(plan.options.out).root
    runs: dict[str, dict] = {BASE: {}}
    for model in plan.methods:
        if not model.train:
            runs[model.method] = {"pretrained": recorded_location(model.unet, root)}
            continue
        overrides = {
            key: recorded_location(value, root) if key in LOCATED_SETTINGS and value else value
            for key, value in model.overrides.items()
        }
        runs[model.method] = {
            "data": recorded_location(plan.source, root) if plan.source else None,
            "overrides": overrides,
        }
    return runs


def _validate_counts(options: RunOptions) -> None:
    counts = {
        "--max-prompts": options.max_prompts,
        "--images-per-prompt": options.images_per_prompt,
        "--steps": options.steps,
        "--jobs": options.jobs,
        "--eval-every": options.eval_every,
        "--train-processes": options.train_processes,
    }
    for option, value in counts.items():
        if value is not None and value < 1:
            raise HarnessError(f"{option} must be at least 1, not {value}")


def protocol_of(options: RunOptions, preset: Preset) -> Protocol:
    """The run's evaluation protocol: every model's, and every point's of --eval-every."""
    return Protocol.of(
        preset,
        options.suites,
        options.scorers,
        max_prompts=options.max_prompts,
        images_per_prompt=options.images_per_prompt,
        steps=options.steps,
        seed=options.seed,
        vae=options.vae,
        scorer_options=options.scorer_options,
    )


def _validate_backend(options: RunOptions) -> None:
    """The backend options, before anything is created: a mistake is one line."""
    if options.backend not in BACKENDS:
        raise HarnessError(f"unknown backend {options.backend!r}; available: {', '.join(BACKENDS)}")
    if options.backend != "ray":
        if options.address is not None:
            raise HarnessError("--address names a Ray cluster: use it with --backend ray")
        return
    if options.jobs is not None:
        raise HarnessError(
            "--jobs sizes the local pool; on Ray the cluster's free GPUs (CPUs) decide how many jobs run at once"
        )
    if importlib.util.find_spec("ray") is None:
        raise HarnessError(
            "--backend ray needs Ray: pip install 'diffusion-alignment-harness[ray]' (or pip install 'ray[default]')"
        )
    if options.address not in (None, "auto"):
        _check_reachable(options.address)


def _check_reachable(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HarnessError(
            f"--address {address!r}: expected auto or HOST:PORT (the head node's GCS port, 6379 by default)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise HarnessError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
            "with `ray start --head` or check the address"
        ) from None


def _validate_curves(options: RunOptions, preset: Preset) -> None:
    """--eval-every and --eval-suites, checked with the run's other options."""
    if options.eval_every is None:
        if options.eval_suites:
            raise HarnessError("--eval-suites names the suites of --eval-every's evaluations: give --eval-every N too")
        return
    if options.pretrained:
        raise HarnessError("--eval-every evaluates a training's intermediate UNets; --pretrained trains nothing")
    suites = options.suites or preset.suites
    unknown = sorted(set(options.eval_suites or ()) - set(suites))
    if unknown:
        raise HarnessError(f"--eval-suites {', '.join(unknown)}: not a suite of this run ({', '.join(suites)})")


def _validate_locations(options: RunOptions) -> None:
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
    base = options.model or preset.base_model
    if not is_built_model(base):
        check_model_available(base, config_file="model_index.json", what="base model", pass_as="--model DIR")
    check_sampler_fits(resolve_base_model(base), preset, shown=base)
    if options.pretrained:
        for method in options.methods:
            location, subfolder = published_unet(options, preset, method)
            check_model_available(
                location,
                config_file="config.json",
                subfolder=subfolder,
                what=f"{method}'s published UNet",
                pass_as=f"--unet {method}=DIR",
            )
            check_network_fits(base, location, what=f"{method}'s UNet", subfolder=subfolder)
    for method, settings in options.overrides.items():
        if settings.get("init_unet"):  # the network a training starts from (--set [METHOD.]init_unet=DIR)
            key = "init_unet" if method == EVERY_METHOD else f"{method}.init_unet"
            require_existing_path(str(settings["init_unet"]), f"--set {key}")
            check_network_fits(base, str(settings["init_unet"]), what=f"--set {key}")


def plan_trainings(options: RunOptions, preset: Preset, source: str | None, synthesized: bool) -> list[ModelEntry]:
    """The methods to train, each with its resolved settings and data, every --set value checked; a method
    whose recipe starts from another's UNet brings that one along (trained, not evaluated) unless asked for,
    and comes after it."""
    planned: dict[str, ModelEntry] = {}

    def plan(method: str, evaluate: bool) -> None:
        every, own = _settings(options, EVERY_METHOD), _settings(options, method)
        overrides = {**({"vae": options.vae} if options.vae else {}), **every, **own}
        processes = _processes(options, method)
        config = trainer.resolve_config(method, preset.name, overrides)
        try:
            grad_accum = trainer.accumulation(config, processes)
        except HarnessError as exc:
            raise HarnessError(f"{method} on {processes} processes: {exc}") from None
        starts_from = None if config.init_unet else config.init_method  # a UNet of the user's replaces the chain
        if starts_from and starts_from not in planned:
            plan(starts_from, evaluate=starts_from in options.methods)
        spec = METHODS.get(method)(config).data_spec()
        data_dir = (
            data_specs.training_source(spec, source, ResultsDir(options.out).data, synthesized) if source else source
        )
        sources = _sources(method, preset, config, vae=options.vae, every=every, own=own)
        planned[method] = ModelEntry(
            method,
            config,
            overrides,
            sources,
            train=True,
            evaluate=evaluate,
            data_dir=data_dir,
            spec=spec,
            init_from=starts_from,
            processes=processes,
            grad_accum=grad_accum,
        )

    for method in options.methods:
        if method not in planned:
            plan(method, evaluate=True)
    unknown = set(options.overrides) - {EVERY_METHOD} - set(planned)
    if unknown:
        raise HarnessError(f"--set names methods that are not trained: {', '.join(sorted(unknown))}")
    return list(planned.values())


def _settings(options: RunOptions, key: str) -> dict[str, Any]:
    """The --set values for ``key`` (a method, or ``EVERY_METHOD``) that are settings of its config."""
    return {name: value for name, value in options.overrides.get(key, {}).items() if name != PROCESSES}


def _processes(options: RunOptions, method: str) -> int:
    """The processes ``method`` trains on: --set METHOD.processes, else --set processes, else --train-processes."""
    every, own = options.overrides.get(EVERY_METHOD, {}), options.overrides.get(method, {})
    value = own.get(PROCESSES, every.get(PROCESSES, options.train_processes))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HarnessError(f"{method}: the number of training processes must be a whole number >= 1, not {value!r}")
    return value


def _sources(
    method: str, preset: Preset, config: Any, *, vae: str | None, every: Mapping[str, Any], own: Mapping[str, Any]
) -> dict[str, str]:
    """Where each of ``config``'s settings comes from, in ``resolve_config``'s order, the last one given winning:
    the method's defaults, the preset's settings for every method, the method's own entry for the preset, --vae
    (``vae``), --set for every method (``every``) and for this one (``own``)."""
    given = {
        "default": {},
        f"preset {preset.name}": {**({"vae": 1} if preset.vae else {}), **preset.method_defaults},
        f"{method}'s {preset.name} entry": method_preset_entry(method, preset.name) or {},
        "--vae": {"vae": 1} if vae else {},
        "--set": every,
        f"--set {method}": own,
    }
    sources = {}
    for setting in (f.name for f in dataclasses.fields(config)):
        sources[setting] = next(
            source for source, settings in reversed(given.items()) if setting in settings or source == "default"
        )
    return sources


def describe(plan: Plan) -> str:
    """`harness run --dry-run`'s text: each model's settings with their sources, the jobs in order, and the UNet
    evaluations they will cost."""
    options, preset, protocol = plan.options, plan.preset, plan.protocol
    lines = [
        f"plan of `harness run --out {options.out}` (--dry-run: nothing is created)",
        f"  preset       {preset.name}",
        f"  base model   {plan.base_model}",
        f"  data         {plan.source or '(none: nothing is trained)'}",
        f"  suites       {', '.join(protocol.suites)}",
        f"  scorers      {', '.join(protocol.scorers)}",
    ]
    for model in plan.methods:
        role = (
            "published UNet " + model.unet
            if not model.train
            else "trained"
            + ("" if model.evaluate else ", only as another's start")
            + (f", from {model.init_from}'s UNet" if model.init_from else "")
        )
        lines += ["", f"{model.method} ({role})"]
        if model.train:
            lines += [
                f"  data         {model.data_dir}",
                f"  training     {_parallelism(model)}",
                f"  {_feature_cache_line(plan.base_model, model)}",
            ]
        lines += [
            f"  {name:24s} {value!r:34s} {model.sources[name]}"
            for name, value in dataclasses.asdict(model.config).items()
        ]
    lines += ["", "jobs, in order (each training's evaluation starts when it ends):"]
    generation = _generation_evals(protocol)
    curve = _generation_evals(plan.curve_protocol) if plan.curve_protocol else 0
    jobs = [f"evaluate {BASE}: {generation:,} UNet evaluations"]
    total, training, unstated = generation, 0.0, []
    for model in plan.methods:
        if model.train:
            per_step = model.processes * model.config.batch_size * model.grad_accum
            samples = model.config.max_steps * per_step
            method = METHODS.get(model.method)(model.config)
            per_sample = method.unet_evals_per_sample()
            cost = (
                f"{per_sample:.4g} = {round(samples * per_sample):,} UNet evaluations"
                if per_sample is not None
                else "the method's UNet evaluations per sample (not stated by the method)"
            )
            spec = method.data_spec()
            if isinstance(spec, Online):  # each prompt's group rated once by each scorer of the reward
                cost += f", {samples * spec.group_size:,} images rated by {' and by '.join(spec.weights)}"
            jobs.append(
                f"train {model.method}: {model.config.max_steps} steps x {per_step} samples ({_parallelism(model)}) "
                f"= {samples:,} samples x {cost}"
            )
            if per_sample is None:
                unstated.append(model.method)
            else:
                training += samples * per_sample
        if model.evaluate:
            jobs.append(f"evaluate {model.method}: {generation:,} UNet evaluations")
            total += generation
            if curve:
                # The last point is the final UNet again: its images are the evaluation's.
                points = len(curves.curve_steps(model.config.max_steps, options.eval_every)) - 1
                jobs.append(
                    f"evaluate {model.method} every {options.eval_every} steps: {points} more points x "
                    f"{curve:,} = {points * curve:,} UNet evaluations"
                )
                total += points * curve
    lines += [f"  {n}. {job}" for n, job in enumerate(jobs, 1)]
    lines.append(f"generation: {total:,} UNet evaluations in all (prompts x images x steps x 2 with guidance)")
    if any(model.train for model in plan.methods):
        besides = f", besides {', '.join(unstated)}'s" if unstated else ""
        lines.append(
            f"training: {round(training):,} UNet evaluations in all{besides} (samples x each method's estimate "
            "per sample, forward passes of every network)"
        )
    return "\n".join(lines)


def _feature_cache_line(base_model: str, model: ModelEntry) -> str:
    """What caching this training's latents takes on disk (one process's estimate), and ``cache_features`` decided."""
    config = model.config
    where = feature_cache_dir(config)
    shape = configured_latent_shape(base_model, config.resolution, config.vae)
    if shape is None:
        return f"feature cache {config.cache_features!r}: no estimate before the base model is fetched ({where})"
    estimate = CacheEstimate(
        images=config.max_steps * samples_per_step(config) * model.spec.images_per_example,
        latent_shape=shape,
        precision=config.latent_precision,
        free=free_space(where),
    )
    return f"feature cache {estimate.describe(config.cache_features)} on {where}"


def _parallelism(model: ModelEntry) -> str:
    """How a training's optimizer step is made: processes x batch x accumulation (samples: pairs or images)."""
    return (
        f"{model.processes} process{'es' if model.processes > 1 else ''} x batch {model.config.batch_size} x "
        f"accumulation {model.grad_accum} per optimizer step"
    )


def _generation_evals(protocol: Protocol) -> int:
    """UNet evaluations of one model's evaluation: prompts x images x sampler steps, x 2 with classifier-free
    guidance (the conditional and unconditional halves)."""
    total = 0
    for name in protocol.suites:
        settings = protocol.sampling(name)
        guided = 2 if settings["guidance_scale"] > 1 else 1
        total += (
            len(protocol.load_suite(name)) * settings["images_per_prompt"] * settings["num_inference_steps"] * guided
        )
    return total
