"""The shared trainer: one accelerate loop for every method.

``train(method, ...)`` takes the method's resolved config (``resolve_config``: paper defaults <-
preset <- overrides), loads the base model, and runs optimizer steps of ``grad_accum``
forward/backward passes each, on one CPU / GPU or many processes (``torchrun`` /
``accelerate launch``, DDP).  The method only writes its loss; everything else
lives here: precision, clipping, EMA, LoRA, feature caches, checkpoints, logs.

Determinism and resume: every random draw of a micro-step (timesteps, noise,
caption dropout, DRO's sampler) comes from a generator seeded by
(seed, step, the pass's place among the step's passes over all processes: micro-step x processes + rank),
so N processes x accumulation a draw what 1 process x N.a does, and the data order is a fixed function of
(seed, epoch).  A checkpoint therefore needs only weights, optimizer, LR
scheduler, EMA and the method's own state (DRO's replay buffer) for a resumed
run to end with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
import typing
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.api.caching import damage_lines
from harness.api.data import Online
from harness.api.environment import say
from harness.api.method import Batch, Method, TrainConfig, TrainingContext
from harness.api.registry import METHODS, PRESETS
from harness.atomic import replacing, staging
from harness.data import specs as data_specs
from harness.data.check import check_data
from harness.data.readers import ImageLoader
from harness.errors import HarnessError
from harness.models.families import family_of, latent_geometry
from harness.models.loading import load_pipeline
from harness.plan.recipes import method_recipe
from harness.progress import progress_bar
from harness.results.identity import LOCATED_SETTINGS, compared, located
from harness.train.export import export_unet
from harness.train.features import (
    CacheEstimate,
    FeatureEncoder,
    feature_cache_dir,
    free_space,
    module_fingerprint,
    samples_per_step,
)
from harness.train.online import OnlineSampler

LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    unet_dir: Path  # the trained network: loadable by UNet2DConditionModel (SD3: SD3Transformer2DModel).from_pretrained
    steps: int
    wall_s: float
    unet_evals_per_sample: float  # UNet forward evaluations per training sample (pair or image), all included
    config: dict
    # Images each reward model scored during training per training sample, by scorer (online methods; {} offline)
    reward_calls_per_sample: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped_images: int = 0
    data_summary: str | None = None  # what was read of a local data directory (harness.data.check), if one


def resolve_config(
    method: str, preset: str | None = None, overrides: dict | None = None, warn_untuned: bool = True
) -> TrainConfig:
    """Config defaults <- the preset's settings for every method <- the method's own for the preset <- overrides.

    ``warn_untuned``: warn (once per process) when a scaled-down preset has no settings for the method; False where
    the config is only shown (`harness presets --show` says so in its own words)."""
    cls = METHODS.get(method)
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    hints = typing.get_type_hints(cls.Config)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise HarnessError(f"unknown setting(s) for {method}: {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    values = {
        **_preset_defaults(method, preset, warn_untuned),
        **(method_preset_entry(method, preset) or {}),
        **overrides,
    }
    config = cls.Config(**{k: _coerce(f"{method}.{k}", v, hints[k]) for k, v in values.items()})
    try:
        config.validate()
    except HarnessError as exc:
        raise HarnessError(f"{method}: {exc}") from None
    return config


_WARNED: set[tuple[str, str]] = set()


def method_preset_entry(method: str, preset: str | None) -> dict | None:
    """The values of the entry ``method`` trains with under ``preset`` (``harness.plan.recipes.method_recipe``: its own
    recipe, or the twin preset's); None when it has neither (an empty entry is one: settings chosen for the
    preset, none of them changed)."""
    found = method_recipe(method, preset)
    return None if found is None else {name: setting.value for name, setting in found[1].items()}


def _preset_defaults(method: str, preset: str | None, warn: bool) -> dict:
    """The settings ``preset`` gives every method; a method without its own for a scaled-down preset is warned
    (once per process) that it trains with these alone, not with settings tuned for it."""
    if preset is None:
        return {}
    found = PRESETS.get(preset)()
    untuned = method_preset_entry(method, preset) is None
    if warn and found.needs_method_settings and untuned and (method, preset) not in _WARNED:
        _WARNED.add((method, preset))
        print(
            f"warning: {method} has no settings for preset {preset!r}; it trains with the preset's settings for "
            f"every method ({', '.join(f'{k}={v}' for k, v in found.method_defaults.items())}), not ones tuned for "
            f"it: give it a recipe, {method}.toml in a folder of the preset's recipes",
            file=sys.stderr,
            flush=True,
        )
    return {**({"vae": found.vae} if found.vae else {}), **found.method_defaults}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Values from a command line arrive as strings: convert them to the field's type."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(hint) or (hint,)
    if value.lower() in ("none", "null") and type(None) in options:
        return None
    for kind in (bool, int, float):
        if kind in options:
            if kind is bool:
                if value.lower() in ("1", "true", "yes", "0", "false", "no"):
                    return value.lower() in ("1", "true", "yes")
                continue
            try:
                return kind(value)
            except ValueError:
                continue
    if (
        str in options
        or typing.get_origin(hint) is typing.Literal
        or any(typing.get_origin(o) is typing.Literal for o in options)
    ):
        return value
    raise HarnessError(f"setting {name}: cannot read {value!r} as {getattr(hint, '__name__', hint)}")


def train(
    method: str,
    *,
    base_model: str | Path,
    data_dir: Path,
    output_dir: Path,
    config: TrainConfig | None = None,
    preset: str | None = None,
    overrides: dict | None = None,
    on_log: LogFn | None = None,
    resume: bool = True,
    seed: int = 0,
    snapshot_every: int = 0,
) -> TrainResult:
    """Train ``method`` from ``base_model`` on ``data_dir``; write checkpoints and ``output_dir/final/unet``
    (and, every ``snapshot_every`` steps before the last, the UNet as it is then: ``snapshot_unet_dir``).
    ``config``: the method's resolved settings (a plan's, ``harness.plan.planner``); None: ``resolve_config(method,
    preset, overrides)`` (give one or the other, not both)."""
    if config is None:
        config = resolve_config(method, preset, overrides)
    elif preset is not None or overrides:
        raise TypeError("train: a resolved config is given, so preset and overrides would be ignored")
    require_init_unet(method, config)
    trainer = _trainer(method, config, base_model, data_dir, output_dir, seed, on_log, snapshot_every)
    return trainer.run(resume=resume)


def finished_training(
    method: str, *, config: TrainConfig, base_model: str | Path, data_dir: Path, output_dir: Path, seed: int = 0
) -> TrainResult | None:
    """What ``train`` with these arguments made, if it ended already (its rerun does nothing); None if not: a
    caller that would start processes or a worker to train learns first that there is nothing to do."""
    return _trainer(method, config, base_model, data_dir, output_dir, seed).finished(time.perf_counter())


def _trainer(
    method: str,
    config: TrainConfig,
    base_model: str | Path,
    data_dir: Path,
    output_dir: Path,
    seed: int,
    on_log: LogFn | None = None,
    snapshot_every: int = 0,
) -> Trainer:
    return Trainer(
        METHODS.get(method)(config),
        base_model=str(base_model),
        data_dir=Path(data_dir),
        output_dir=Path(output_dir),
        seed=seed,
        on_log=on_log,
        snapshot_every=snapshot_every,
    )


def require_init_unet(method: str, config: TrainConfig) -> None:
    """A recipe that starts from another method's UNet needs it given, when trained on its own."""
    if config.init_method and not config.init_unet:
        raise HarnessError(
            f"{method}'s recipe starts from the UNet of a {config.init_method} run on the same data: train it first "
            f"(`harness train --method {config.init_method} ...`) and pass --set init_unet=OUT/final/unet, "
            "or use `harness run`, which chains the two"
        )


def snapshot_unet_dir(output_dir: Path, step: int) -> Path:
    """Where a training exports its UNet of ``step`` (``train(snapshot_every=...)``), as it exports the final one."""
    return Path(output_dir) / "snapshots" / f"step-{step}" / "unet"


class EMA:
    """diffusers' ``EMAModel`` over the trainable parameters, as the public training scripts use it (DiffusionDRO
    train.py:392-393).

    Its decay schedule is part of the recipe: 0 at the first update (the shadow becomes the
    weights), then ``min((1 + n) / (10 + n), ema_decay)`` at update ``n + 1``.  With ``on_cpu`` the
    shadow lives on the CPU between updates and visits the device for each (DRO's ``offload_ema``).
    """

    def __init__(self, parameters: dict[str, torch.nn.Parameter], decay: float, on_cpu: bool) -> None:
        from diffusers.training_utils import EMAModel

        self.names = list(parameters)
        self.model = EMAModel(list(parameters.values()), decay=decay, foreach=True)
        self.on_cpu = on_cpu
        if on_cpu:
            self.model.to("cpu")

    def shadow(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.model.shadow_params))

    @torch.no_grad()
    def update(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        device = next(iter(parameters.values())).device
        if self.on_cpu:
            self.model.to(device)
        self.model.step(list(parameters.values()))
        if self.on_cpu:
            self.model.to("cpu")

    def load(self, shadow: dict[str, torch.Tensor], updates: int) -> None:
        for name, tensor in zip(self.names, self.model.shadow_params):
            tensor.copy_(shadow[name])
        self.model.optimization_step = updates


class SampleOrder:
    """Which record each global sample position reads: a fresh permutation per epoch, fixed by the seed; with
    ``weights``, each epoch's ``size`` draws with replacement in proportion to them (torch's
    ``WeightedRandomSampler``, as the public KTO code samples: train_kto_sd_v1.5.py:1186-1189)."""

    def __init__(self, size: int, seed: int, weights: Any = None) -> None:
        self.size = size
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch = epoch
            self._perm = (
                torch.randperm(self.size, generator=generator)
                if self.weights is None
                else torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
            )
        return int(self._perm[offset])


def accumulation(config: TrainConfig, processes: int) -> int:
    """Forward/backward passes per optimizer step on each of ``processes``: ``grad_accum``, or with
    ``effective_batch_size`` that batch over ``batch_size x processes`` (a HarnessError where it does not divide)."""
    if not config.effective_batch_size:
        return config.grad_accum
    batch_per_step = config.batch_size * processes
    if config.effective_batch_size % batch_per_step:
        raise HarnessError(
            f"effective_batch_size {config.effective_batch_size} is not a multiple of "
            f"batch_size x processes = {batch_per_step}"
        )
    return config.effective_batch_size // batch_per_step


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The config's optimizer over ``params``: Adafactor, or AdamW fused or per operation (``adamw_fused``)."""
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=lr,
            weight_decay=config.weight_decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            clip_threshold=1.0,
        )
    # fused: one kernel over all tensors; on CPU 6x faster than the per-tensor loop (bench/train_step.py).
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        fused=config.adamw_fused,
        foreach=not config.adamw_fused,
    )


def step_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The single source of randomness of one forward/backward: ``slot`` is its place among the step's passes over
    all processes (``micro x processes + rank``), so N processes x accumulation a draw what 1 process x N.a does."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + slot) * 131)


def trainable_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if p.requires_grad}


@contextmanager
def adapters_disabled(unet: Any):
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


class Trainer:
    """One training run.  Methods' hooks receive its ``TrainingContext``, never the trainer itself."""

    def __init__(
        self,
        method: Method,
        *,
        base_model: str,
        data_dir: Path,
        output_dir: Path,
        seed: int,
        on_log: LogFn | None,
        snapshot_every: int = 0,
    ) -> None:
        self.method = method
        self.config = method.config
        self.base_model = base_model
        self.data_dir = data_dir
        self.output_dir = output_dir
        self.final_state = output_dir / "final" / "trainer_state.json"  # written last: the training ended
        self.seed = seed
        self.on_log = on_log
        self.snapshot_every = snapshot_every

    # -- set-up -----------------------------------------------------------------------------------
    def _setup(self) -> None:
        self._setup_accelerator()
        self.spec = self.method.data_spec()
        self.examples = data_specs.examples(self.spec, self.data_dir)
        self.loader = ImageLoader()
        # Rows with an unreadable image are left out before the first step (the same rows however long it
        # trains), not met when drawn: `harness run` and `train` refuse them up front unless --skip-bad-images.
        check = check_data(self.data_dir, skip_bad_images=True, progress=self.accelerator.is_local_main_process)
        self.data_summary = None if check is None else check.summary()
        if check is not None:
            self.examples = self.examples.without(check.bad_images())
            self.loader.skipped.update(f"{bad.message()}" for bad in check.bad)
            if self.accelerator.is_main_process:
                print(f"training data: {self.data_summary}", flush=True)
        self._setup_models()
        self._setup_optimizer()
        # The shared online loop (an Online spec): each micro-batch's images sampled from the policy and rewarded.
        self.online = (
            OnlineSampler(
                self.spec, self.features.pipe, self.models, self.features.cond, self.latent_shape, self.device
            )
            if isinstance(self.spec, Online)
            else None
        )
        self.order = SampleOrder(len(self.examples), self.seed, self.examples.weights)
        self.context = self._context()
        self.method.setup(self.context)

    def _context(self) -> TrainingContext:
        # Keyed by the weights training starts from (hashed once, on first use): another base model or
        # init_unet never shares a method's cache.
        starting_weights = functools.cache(lambda: module_fingerprint(self.unet))

        def cache(name: str) -> Path:
            return self.cache_dir / name / starting_weights()

        return TrainingContext(
            models=self.models,
            scheduler=self.noise_scheduler,
            latent_shape=self.latent_shape,
            grad_accum=self.grad_accum,
            captions=self.examples.captions(),
            data_scores=self.examples.scores,
            encode=self.features.cond,
            cache=cache,
            device=self.device,
            batch=self._batch_of,
        )

    def _batch_of(self, step: int, micro: int) -> Batch:
        """The micro-batch ``make_batch`` gives in the loop, with the generator the loop hands it."""
        return self.make_batch(step, micro, self._generator(step, micro))

    def _generator(self, step: int, micro: int) -> torch.Generator:
        return step_generator(self.seed, step, micro * self.world + self.rank)

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        on_gpu = torch.cuda.is_available()
        precision = self.config.mixed_precision
        if precision == "fp16" and not on_gpu:
            print("note: no fp16 autocast on a CPU; training in bf16 instead", flush=True)
            precision = "bf16"
        # accelerate keeps one global state per process; `harness run` trains several methods in one
        # process, each with its own precision.  The distributed part (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not on_gpu)
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def _setup_models(self) -> None:
        """Frozen encoders in the compute dtype, the policy in fp32, the reference, the feature cache."""
        config = self.config
        pipe = load_pipeline(self.base_model, device=self.device, vae=config.vae)
        self.family = family_of(pipe)
        pipe.vae.requires_grad_(False).eval().to(torch.float32 if config.vae_fp32 else self.weight_dtype)
        for encoder in self.family.text_encoders(pipe):
            encoder.requires_grad_(False).eval().to(self.weight_dtype)
        unet = self.family.denoiser(pipe)  # the UNet, or SD3's transformer
        if config.init_unet:
            unet = self.family.load_denoiser(config.init_unet).to(self.device)
        unet.to(torch.bfloat16 if config.master_weights == "bf16" else torch.float32)
        resolution, self.latent_shape = latent_geometry(unet.config, pipe.vae.config, config.resolution)
        self.cache_dir = feature_cache_dir(config)
        estimate = CacheEstimate(
            # every image drawn, but no more than each distinct image in each orientation
            images=self.spec.images_per_example
            * min(
                config.max_steps * samples_per_step(config, self.world), len(self.examples) * (1 + config.random_flip)
            ),
            latent_shape=self.latent_shape,
            precision=config.latent_precision,
            free=free_space(self.cache_dir),
        )
        if self.accelerator.is_main_process:
            print(f"feature cache: {estimate.describe(config.cache_features)} on {self.cache_dir}", flush=True)
        self.features = FeatureEncoder(
            pipe,
            device=self.device,
            resolution=resolution,
            # Processes on other disks may decide apart: cached or not, the features are the same.
            cache_dir=self.cache_dir if estimate.caches(config.cache_features) else None,
            loader=self.loader,
            max_sequence_length=config.max_sequence_length,
            precision=config.latent_precision,
        )
        if config.lora_rank > 0:
            from peft import LoraConfig

            unet.requires_grad_(False)
            # peft draws the adapters' A from the global generator: seeded here, so the same seed starts from
            # the same adapters whatever ran before in this process (`harness train` and `harness run` alike).
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                unet.add_adapter(
                    LoraConfig(
                        r=config.lora_rank,
                        lora_alpha=config.lora_alpha or config.lora_rank,
                        init_lora_weights="gaussian",
                        target_modules=self.family.lora_targets(config.lora_dual_attention),
                    )
                )
            # The reference is the same network with its adapters off: no second copy in memory.
            reference = lambda: (unet, adapters_disabled(unet))  # noqa: E731
        else:
            import copy

            reference_dtype = {None: self.weight_dtype, "fp16": torch.float16, "bf16": torch.bfloat16}[
                config.reference_dtype
            ]
            frozen_ref = copy.deepcopy(unet).requires_grad_(False).eval().to(reference_dtype)
            reference = lambda: (frozen_ref, nullcontext())  # noqa: E731
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self.unet = unet
        self.reference = reference
        self.noise_scheduler = self.family.training_scheduler(pipe.scheduler)

    def _setup_optimizer(self) -> None:
        """Accumulation, (scaled) lr, optimizer, LR schedule, DDP wrapping, EMA; then the loss-side Models."""
        from diffusers.optimization import get_scheduler

        config = self.config
        batch_per_step = config.batch_size * self.world
        self.grad_accum = accumulation(config, self.world)
        self.lr = config.lr * (batch_per_step * self.grad_accum if config.scale_lr else 1)
        optimizer = make_optimizer(list(trainable_parameters(self.unet).values()), config, self.lr)
        # Stepped by us once per optimizer step (not prepared by accelerate, which would step it once
        # per process and force the Salesforce code's "warmup x num_processes" correction).
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps
        )
        self.policy, self.optimizer = self.accelerator.prepare(self.unet, optimizer)
        self.ema = (
            EMA(trainable_parameters(self.unet), config.ema_decay, config.ema_on_cpu) if config.ema_decay else None
        )
        self.models = self.family.models(
            policy=self.policy,
            unwrapped=self.unet,
            reference=self.reference,
            scheduler=self.noise_scheduler,
            autocast=self.accelerator.autocast,
            reference_in_own_dtype=self.config.reference_dtype is not None,
        )

    # -- data ---------------------------------------------------------------------------------------
    def make_batch(self, step: int, micro: int, generator: torch.Generator) -> Batch:
        """This process's micro-batch: deterministic in (seed, step, micro, rank); corrupt samples replaced.

        Random draws, in this order, each only when its option is on: a flip per image (per pair with
        ``joint_pair_transform``), the latents' posterior samples, then the caption dropout.
        """
        config = self.config
        size = config.batch_size
        first = ((step * self.grad_accum + micro) * self.world + self.rank) * size
        examples = [self.examples[self.order(first + slot)] for slot in range(size)]
        per_example = self.spec.images_per_example
        joint = config.joint_pair_transform and per_example == 2
        if not config.random_flip:
            slot_flips = [None] * size
        elif joint:  # one coin per pair (mapo utils.py:226-233)
            slot_flips = [[coin] * 2 for coin in (torch.rand(size, generator=generator) < 0.5).tolist()]
        else:
            flips = (torch.rand(size * per_example, generator=generator) < 0.5).tolist()
            slot_flips = [flips[i * per_example : (i + 1) * per_example] for i in range(size)]

        def encode(example, flips):
            return self.features.latents(list(example.images), flips, list(example.size_from) if joint else None)

        chosen = []
        for slot, example in enumerate(examples):
            encoded = encode(example, slot_flips[slot])
            attempt = 0
            while any(posterior is None for _, posterior in encoded):  # corrupt: take the next sample in the order
                attempt += 1
                if attempt >= len(self.examples):
                    raise HarnessError(f"no training sample in {self.data_dir} has decodable images")
                example = self.examples[self.order(first + slot + attempt)]
                encoded = encode(example, slot_flips[slot])
            chosen.append((example, encoded))
        # Image slot by image slot: for pairs all winners, then all losers (the layout pair losses chunk in two).
        posteriors = [enc[i][1] for i in range(per_example) for _, enc in chosen]
        if posteriors:
            means = torch.stack([p.mean for p in posteriors])
            latents = torch.stack([p.sample(generator) for p in posteriors]) if config.latent_sample else means
        else:  # prompts only
            means = latents = torch.empty(0, *self.latent_shape)
        keys = [enc[i][0] for i in range(per_example) for _, enc in chosen]
        scores = torch.tensor([ex.scores[i] for i in range(per_example) for ex, _ in chosen], dtype=torch.float32)
        labels = torch.tensor([ex.labels[i] for i in range(per_example) for ex, _ in chosen], dtype=torch.float32)
        dropped = torch.rand(size, generator=generator) < config.caption_dropout
        captions = ["" if drop else ex.caption for (ex, _), drop in zip(chosen, dropped.tolist())]
        cond = self.features.cond(captions)
        batch = Batch(
            latents=latents.to(self.device),
            means=means.to(self.device),
            cond=cond,
            keys=keys,
            scores=scores,
            labels=labels,
            captions=captions,
            generator=generator,
        )
        if self.online is not None:  # after every other draw: the rollout's noise comes last
            batch.rollout = self.online.rollout(batch, [example.caption for example, _ in chosen])
        return batch

    # -- checkpoints ----------------------------------------------------------------------------------
    @functools.cached_property
    def _config_record(self) -> dict:
        # Inputs by content (harness.results.identity): moved, they resume; edited in place, they do not.
        config = {
            key: located(value) if key in LOCATED_SETTINGS and value else value
            for key, value in dataclasses.asdict(self.config).items()
        }
        return {
            "method": type(self.method).__name__,
            "base_model": located(self.base_model),
            "data": located(self.data_dir),
            "seed": self.seed,
            "config": config,
        }

    def finished(self, started: float) -> TrainResult | None:
        """The result of this training if it ended already with these settings (``started``: when the caller
        began, for the result's wall time)."""
        if self.final_state.exists():
            done = json.loads(self.final_state.read_text(encoding="utf-8"))
            if self._same_settings(done):
                return self._result(done, started)
        return None

    def _same_settings(self, state: dict) -> bool:
        record = json.loads(json.dumps(self._config_record, default=str))
        return compared({k: state.get(k) for k in record}) == compared(record)

    def _checkpoints(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.output_dir.glob("checkpoint-*"):
            if path.name.split("-")[1].isdigit() and (path / "trainer_state.json").exists():
                found.append((int(path.name.split("-")[1]), path))
        return sorted(found)

    def _save_checkpoint(self, step: int, counters: dict) -> None:
        final = self.output_dir / f"checkpoint-{step}"
        tmp = self.output_dir / f".checkpoint-{step}.tmp"
        with staging(final, tmp):  # half a checkpoint is of no use to a rerun
            self._write_checkpoint(step, counters, tmp, final)

    def _write_checkpoint(self, step: int, counters: dict, tmp: Path, final: Path) -> None:
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(
                {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(self.unet).items()},
                str(tmp / "unet.safetensors"),
            )
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
            if self.ema is not None:
                save_file({n: t.cpu().contiguous() for n, t in self.ema.shadow().items()}, str(tmp / "ema.safetensors"))
        self.accelerator.wait_for_everyone()
        method_state = self.method.state_dict()  # per process: each rank has its own DRO replay buffer
        if method_state:
            save_file(
                {n: t.cpu().contiguous() for n, t in method_state.items()}, str(tmp / f"method-{self.rank}.safetensors")
            )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {
                "step": step,
                **counters,
                "skipped": sorted(self.loader.skipped),
                **self._config_record,
                "ema_updates": self.ema.model.optimization_step if self.ema is not None else 0,
            }
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1, default=str), encoding="utf-8")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # a checkpoint exists completely or not at all
            for _, old in self._checkpoints()[: -self.config.checkpoints_kept]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _load_checkpoint(self, path: Path) -> dict:
        from safetensors.torch import load_file

        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if not self._same_settings(state):
            raise HarnessError(
                f"{path} was written by a run with different settings; use another output "
                "directory or resume=False to start over"
            )
        weights = load_file(str(path / "unet.safetensors"))
        params = trainable_parameters(self.unet)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
        # Untrusted files: tensors and plain containers only.
        # Onto the CPU, then moved by load_state_dict to each parameter's device: a process of a group on a CPU has
        # the device "cpu:<rank>", which torch.load cannot map a storage to.
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if self.ema is not None:
            self.ema.load(load_file(str(path / "ema.safetensors")), updates=state.get("ema_updates", state["step"]))
        self.loader.skipped.update(state.get("skipped", []))  # corrupt images seen before the interruption
        method_file = path / f"method-{self.rank}.safetensors"
        if method_file.exists():
            device = str(self.device) if self.device.type == "cuda" else "cpu"
            self.method.load_state_dict(load_file(str(method_file), device=device))
        return state

    def _save_final(self) -> Path:
        return self._export_unet(self.output_dir / "final" / "unet")

    def _export_unet(self, unet_dir: Path) -> Path:
        if self.accelerator.is_main_process:
            export_unet(self.unet, unet_dir, self.family, ema=self.ema.shadow() if self.ema else None)
        self.accelerator.wait_for_everyone()
        return unet_dir

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, resume: bool = True) -> TrainResult:
        started = time.perf_counter()
        config = self.config
        if resume and (done := self.finished(started)) is not None:
            return done  # a rerun of a finished run does nothing
        self._setup()
        if not resume and self.accelerator.is_main_process:
            for _, path in self._checkpoints():
                shutil.rmtree(path)
            shutil.rmtree(self.output_dir / "final", ignore_errors=True)
        self.accelerator.wait_for_everyone()

        counters = {"unet_evals": 0, "samples": 0, "reward_calls": {}}
        start = 0
        checkpoints = self._checkpoints() if resume else []
        if checkpoints:
            loaded = self._load_checkpoint(checkpoints[-1][1])
            start = loaded["step"]
            # A checkpoint older than the reward count has none: its online steps' calls are not counted.
            counters = {k: loaded.get(k, default) for k, default in counters.items()}
        writer = self._tensorboard()
        progress = progress_bar(
            range(start, config.max_steps),
            initial=start,
            total=config.max_steps,
            unit="step",
            desc=type(self.method).__name__,
            enabled=self.accelerator.is_local_main_process,
        )
        params = trainable_parameters(self.unet)
        self.models.unet_evals = 0
        evals_before, calls_before = counters["unet_evals"], dict(counters["reward_calls"])
        calls = self.online.reward_calls if self.online is not None else {}
        calls.clear()  # what this run scores from here on, added to the checkpoint's count
        for step in progress:
            terms = self._optimizer_step(step, params)
            counters["samples"] += self.config.batch_size * self.grad_accum
            counters["unet_evals"] = evals_before + self.models.unet_evals
            counters["reward_calls"] = {
                name: calls_before.get(name, 0) + calls.get(name, 0) for name in {*calls_before, *calls}
            }
            done = step + 1
            if done % config.checkpoint_every == 0 or done == config.max_steps:
                self._save_checkpoint(done, counters)
            if self.snapshot_every and done % self.snapshot_every == 0 and done < config.max_steps:
                self._export_unet(snapshot_unet_dir(self.output_dir, done))  # the last one is final/unet
            if self.accelerator.is_main_process:
                if self.on_log is not None:
                    self.on_log(done, terms)
                if writer is not None:
                    for name, value in terms.items():
                        writer.add_scalar(f"train/{name}", value, done)
            progress.set_postfix(loss=f"{terms['loss']:.4g}", lr=f"{terms['lr']:.3g}")
        if writer is not None:
            writer.close()
        self._save_final()
        state = {
            "step": config.max_steps,
            **counters,
            "skipped_images": len(self.loader.skipped),
            "data_summary": self.data_summary,
            **self._config_record,
        }
        if self.accelerator.is_main_process:
            with replacing(self.final_state) as temporary:
                temporary.write_text(json.dumps(state, indent=1, default=str), encoding="utf-8")
            if self.loader.skipped:
                print(
                    f"skipped {len(self.loader.skipped)} corrupt image(s), e.g. {sorted(self.loader.skipped)[0]}",
                    flush=True,
                )
        for line in damage_lines():  # the cache entries this process found damaged, and computed again
            say(f"   {line}")
        self.accelerator.wait_for_everyone()
        return self._result(state, started)

    def _optimizer_step(self, step: int, params: dict[str, torch.nn.Parameter]) -> dict[str, float]:
        sums: dict[str, float] = {}
        for micro in range(self.grad_accum):
            generator = self._generator(step, micro)
            self.method.before_micro_step(self.context, step, micro, generator)
            batch = self.make_batch(step, micro, generator)
            last = micro == self.grad_accum - 1
            with nullcontext() if last else self.accelerator.no_sync(self.policy):
                loss, logs = self.method.loss(batch, self.models)
                self.accelerator.backward(loss / self.grad_accum)
            for name, value in {"loss": loss.item(), **logs}.items():
                sums[name] = sums.get(name, 0.0) + value / self.grad_accum
        # One all-reduce carries the logs of every process; a NaN anywhere makes the mean NaN.
        names = list(sums)
        values = self.accelerator.reduce(torch.tensor([sums[n] for n in names], device=self.device), "mean")
        terms = dict(zip(names, values.tolist()))
        if not math.isfinite(terms["loss"]):
            last_good = self._checkpoints()
            where = f"last good checkpoint: {last_good[-1][1]}" if last_good else "no checkpoint was written yet"
            raise HarnessError(
                f"loss became {terms['loss']} at step {step + 1}; training stopped ({where}); "
                "lower lr or beta, or use bf16 instead of fp16"
            )
        if self.config.max_grad_norm:
            grad_norm = self.accelerator.clip_grad_norm_(list(params.values()), self.config.max_grad_norm)
        else:  # unclipped (DRO's published recipes): the norm that goes through is still logged
            self.accelerator.unscale_gradients()
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params.values() if p.grad is not None])
        terms["grad_norm"] = float(grad_norm)
        terms["lr"] = self.lr_scheduler.get_last_lr()[0]
        scaler = self.accelerator.scaler  # fp16 only
        scale = scaler.get_scale() if scaler is not None else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # A step the fp16 loss scaler skipped (an overflow) leaves the weights as they were: the LR schedule
        # and the EMA do not advance either, as accelerate's AcceleratedScheduler (0.27.2, scheduler.py:66-68)
        # treats the public scripts' prepared scheduler.  Told by the scale's back-off, not by accelerate's
        # step_was_skipped, which a fused AdamW (it skips inside its kernel) never sets.
        skipped = scale is not None and scaler.get_scale() < scale
        terms["skipped_step"] = float(skipped)
        if not skipped:
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.update(params)
        return terms

    def _tensorboard(self):
        if not self.accelerator.is_main_process:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def _result(self, state: dict, started: float) -> TrainResult:
        return TrainResult(
            unet_dir=self.output_dir / "final" / "unet",
            steps=state["step"],
            wall_s=time.perf_counter() - started,
            unet_evals_per_sample=state["unet_evals"] / max(1, state["samples"]),
            config=dataclasses.asdict(self.config),
            reward_calls_per_sample={
                name: n / max(1, state["samples"]) for name, n in sorted(state.get("reward_calls", {}).items())
            },
            skipped_images=state.get("skipped_images", 0),
            data_summary=state.get("data_summary"),
        )
