"""What a preference-alignment method is, as the shared trainer sees it.

A method is one class per file, registered with ``@register_method(name)``.  It
declares the data it trains on (a ``DataSpec``: ``Pairs()``, ``Experts(...)``,
``LabelledImages()``, ``PromptsOnly()``), a ``Config`` dataclass with its paper's
hyper-parameters (it extends ``TrainConfig``, the knobs every method shares), and its
loss on a batch.  Its settings under each preset (the papers' GPU recipes and the scaled-down
``toy`` / ``tiny`` worlds alike) are data, a recipe file per preset (``harness/plan/recipes.py``).  The trainer owns
everything else: models, data, encoding caches, precision, distribution, checkpoints;
what of it a method may use is the ``TrainingContext`` and the ``Models`` below.

Losses are written over *per-sample errors* (``per_sample_error``): one number
per sample, the mean over C, H, W of the squared difference between the network's
prediction and its target.  Each paper's loss is then a pure function of such
tensors, testable without any network.  The noisy input and the target come from the
base model's forward process (``Models.process``: epsilon diffusion for SD1.5 / SDXL,
flow matching for SD3), so one loss serves both families; "UNet" in names below means
the denoising network, SD3's transformer included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from harness.api.data import DataSpec, Pairs
from harness.api.environment import require_existing_path
from harness.api.noise import NoiseProcess, sde_step
from harness.errors import HarnessError


def _help(text: str) -> dict[str, str]:
    """A Config field's metadata: its help text (``harness methods --show METHOD``, ``setting_help``)."""
    return {"help": " ".join(text.split())}


@dataclass
class TrainConfig:
    """Knobs every method shares.  Method configs subclass this with their paper's defaults.

    Every field carries its help text (``field(metadata={"help": ...})``); a subclass that only changes a
    default keeps its base's (``setting_help``)."""

    max_steps: int = field(default=1000, metadata=_help("optimizer steps"))
    batch_size: int = field(
        default=1, metadata=_help("samples (pairs, or expert images) per process per forward/backward")
    )
    grad_accum: int = field(default=1, metadata=_help("forward/backward passes per optimizer step"))
    effective_batch_size: int | None = field(
        default=None,
        metadata=_help(
            """samples per optimizer step over all processes; when set, grad_accum = effective_batch_size /
        (batch_size x processes): the published effective batch reproduced on whatever number of GPUs is at hand"""
        ),
    )
    lr: float = field(default=1e-5, metadata=_help("learning rate (scaled first when scale_lr)"))
    scale_lr: bool = field(
        default=False,
        metadata=_help(
            """Salesforce's --scale_lr: lr x batch_size x grad_accum x processes (so 1e-8 x 2048 = 2.048e-5)"""
        ),
    )
    lr_scheduler: str = field(
        default="constant_with_warmup", metadata=_help("any name diffusers.optimization.get_scheduler knows")
    )
    warmup_steps: int = field(default=0, metadata=_help("optimizer steps of the lr schedule's warmup"))
    optimizer: Literal["adamw", "adafactor"] = field(default="adamw", metadata=_help("adamw or adafactor"))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW's beta1"))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW's beta2"))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW's epsilon"))
    adamw_fused: bool = field(
        default=True,
        metadata=_help(
            """AdamW as one fused kernel: its arithmetic in fp32 whatever the weights' dtype (its state stored in that
        dtype).  False: torch's foreach AdamW, every operation rounded to the weights' dtype; on bf16 weights that
        is the public DRO code's optimizer (train.py:461, torch 2.3.1's default on CUDA: foreach)"""
        ),
    )
    weight_decay: float = field(default=1e-2, metadata=_help("AdamW's weight decay"))
    max_grad_norm: float | None = field(
        default=1.0, metadata=_help("gradients clipped to this norm; None: no clipping (the norm is still logged)")
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata=_help("autocast dtype of the forward: no, fp16 or bf16")
    )
    master_weights: Literal["fp32", "bf16"] = field(
        default="fp32",
        metadata=_help(
            """the trainable weights' own dtype.  "fp32": master weights in fp32, the forward in mixed precision (the
        Salesforce and SmPO scripts); "bf16": the weights themselves in bf16, optimizer state too, as the public
        DRO code trains (DiffusionDRO train.py:379-384 loads the UNet in bf16; cheaper, and updates below bf16's
        resolution are lost)"""
        ),
    )
    reference_dtype: Literal["fp16", "bf16"] | None = field(
        default=None,
        metadata=_help(
            """the frozen reference network's weights, its forward (outside autocast) and its per-sample errors in this
        dtype, as the public scripts run it (Salesforce DPO train.py:939, 1132-1137 and SmPO train.py:880,
        1052-1057: fp16; DRO train.py:363-368, 753-758: bf16).  None: the weights in the mixed-precision dtype
        under autocast, the errors in fp32.  Needs the frozen copy (lora_rank 0)"""
        ),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute activations in the backward: less memory, more time")
    )
    ema_decay: float | None = field(
        default=None,
        metadata=_help("decay of an EMA of the weights; None: no EMA; the final UNet is the EMA one when set"),
    )
    ema_on_cpu: bool = field(default=False, metadata=_help("keep the EMA weights on the CPU between updates"))
    lora_rank: int = field(
        default=0, metadata=_help("0: full fine-tuning; >0: LoRA adapters of this rank, reference = adapters disabled")
    )
    lora_alpha: float | None = field(default=None, metadata=_help("LoRA's alpha; None: = lora_rank"))
    lora_dual_attention: bool = field(
        default=True,
        metadata=_help(
            """SD3 transformers: LoRA on the joint attention (`attn.*`, both streams) and, when True, on the second,
        image-only attention (`attn2.*`) of SD3.5 Medium's dual-attention blocks too; False: `attn.*` alone,
        flow_grpo's targets (scripts/train_sd3_dpo.py:389-398).  No effect on a UNet"""
        ),
    )
    max_sequence_length: int = field(
        default=256,
        metadata=_help(
            """SD3: T5 tokens per caption (diffusers' encode_prompt default 256; flow_grpo encodes with 128,
        scripts/train_sd3_dpo.py:213, 602).  No effect on SD1.5 / SDXL, whose CLIPs read 77"""
        ),
    )
    caption_dropout: float = field(default=0.0, metadata=_help('share of captions replaced by "" during training'))
    random_flip: bool = field(
        default=True,
        metadata=_help(
            """each training image flipped left-right with probability 0.5, as the public scripts (DiffusionDPO
        train.py:760); False: no flip"""
        ),
    )
    latent_sample: bool = field(
        default=True,
        metadata=_help(
            """each training latent a fresh sample of the VAE posterior each time it is used, as the public scripts
        (DiffusionDPO train.py:1028); False: the posterior mean"""
        ),
    )
    joint_pair_transform: bool = field(
        default=False,
        metadata=_help(
            """pairs: one flip for both images of a pair, the source's image_1 first resized to image_0's size (MaPO's
        transform of the pair as one tensor).  False: each image flipped on its own coin, at its own size (the
        Salesforce DPO and SmPO scripts transform each image separately)"""
        ),
    )
    resolution: int | None = field(
        default=None, metadata=_help("training image size in px; None: the UNet's native size x the VAE's scale factor")
    )
    init_unet: str | None = field(
        default=None, metadata=_help("start policy and reference from this UNet (e.g. an SFT run's output)")
    )
    init_method: str | None = field(
        default=None,
        metadata=_help(
            """start from the UNet another method trains first on the same data (SmPO's SD1.5 recipe: "sft"):
        `harness run` chains the two; `harness train` needs init_unet instead"""
        ),
    )
    vae: str | None = field(default=None, metadata=_help("replacement VAE, e.g. madebyollin/sdxl-vae-fp16-fix"))
    vae_fp32: bool = field(
        default=False,
        metadata=_help(
            """the VAE encodes in fp32 whatever the mixed precision (the KTO and MaPO scripts); False: in the
        mixed-precision dtype, as the text encoders (the Salesforce DPO, SmPO and DRO scripts)"""
        ),
    )
    cache_features: bool | Literal["auto"] = field(
        default="auto",
        metadata=_help(
            """VAE latents and text embeddings computed once, cached on disk; False: encoded again at every use (the
        public scripts); "auto": cached when the latents' estimate (images visited x bytes per image) fits in half
        the free space of the cache's disk, the decision printed before training.  Cached or not, the features are
        bit-identical, so this changes time and disk only"""
        ),
    )
    latent_precision: Literal["float16", "float32"] = field(
        default="float16",
        metadata=_help(
            """the dtype each image's VAE posterior (mean, std) is rounded to when encoded, cached or not: float16
        halves the cache (SD1.5 at 512 px: 64 KiB per image and orientation, not 128) at a relative error of at
        most 2^-11 = 4.9e-4, 2.1e-4 RMS (docs/scaling.md); float32: unrounded (the toy presets, whose leaderboard
        predates it)"""
        ),
    )
    cache_dir: str | None = field(
        default=None,
        metadata=_help("the feature cache; None: $HARNESS_CACHE/train-features (content-keyed, shareable)"),
    )
    checkpoint_every: int = field(default=500, metadata=_help("optimizer steps between checkpoints"))
    checkpoints_kept: int = field(default=2, metadata=_help("the newest checkpoints kept on disk"))

    def validate(self) -> None:
        """Raise ``HarnessError`` (one line) for a value no run can use; runs before any model loads.
        A method's Config extends this for its own fields (calling ``super().validate()``)."""
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise HarnessError(f"{name} must be >= 1, not {getattr(self, name)}")
        choices = {
            "optimizer": ("adamw", "adafactor"),
            "master_weights": ("fp32", "bf16"),
            "mixed_precision": ("no", "fp16", "bf16"),
            "reference_dtype": ("fp16", "bf16", None),
            "latent_precision": ("float16", "float32"),
            "cache_features": (True, False, "auto"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise HarnessError(f"{name} must be one of {', '.join(map(str, valid))}, not {getattr(self, name)!r}")
        if not 1 <= self.max_sequence_length <= 512:  # T5's positions (diffusers refuses more)
            raise HarnessError(f"max_sequence_length must lie in [1, 512], not {self.max_sequence_length}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise HarnessError("caption_dropout must lie in [0, 1]")
        from diffusers.optimization import SchedulerType

        schedules = [kind.value for kind in SchedulerType]
        if self.lr_scheduler not in schedules:
            raise HarnessError(f"unknown lr_scheduler {self.lr_scheduler!r}; valid: {', '.join(schedules)}")
        if self.reference_dtype is not None and self.lora_rank > 0:
            raise HarnessError(
                "reference_dtype needs a frozen reference copy; with LoRA the reference is the "
                "policy's own weights (set lora_rank 0 or reference_dtype none)"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise HarnessError("ema_decay must lie in (0, 1) or be None")
        if self.init_unet:
            require_existing_path(self.init_unet, "init_unet")


def setting_help(config: type[TrainConfig], name: str) -> str:
    """The help text of a Config field: its own, or where a subclass only changed its default, its base's."""
    for klass in config.__mro__:
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and "help" in found.metadata:
            return found.metadata["help"]
    raise HarnessError(f"{config.__name__}.{name} has no help text: give it field(metadata={{'help': ...}})")


@dataclass
class Cond:
    """Network conditioning for a batch: text hidden states, plus SDXL's pooled embeddings and time ids
    (``added``: ``text_embeds``, ``time_ids``) or SD3's pooled projections (``pooled_projections``)."""

    hidden: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx: torch.Tensor | slice) -> Cond:
        return Cond(self.hidden[idx], None if self.added is None else {k: v[idx] for k, v in self.added.items()})

    def repeat(self, n: int) -> Cond:
        """The batch stacked n times (pair winners then losers share one caption)."""
        return Cond.cat([self] * n)

    @staticmethod
    def cat(parts: list[Cond]) -> Cond:
        added = None if parts[0].added is None else {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        return Cond(torch.cat([p.hidden for p in parts]), added)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Cond:
        added = None if self.added is None else {k: v.to(device, dtype) for k, v in self.added.items()}
        return Cond(self.hidden.to(device, dtype), added)


class Models:
    """The networks a loss may call, with network evaluations counted per batch element.

    ``policy`` runs the trained network with gradients (through the DDP wrapper when
    distributed), ``reference`` the frozen starting network without gradients (a
    copy, or with LoRA the same network with its adapters disabled), ``snapshot`` the
    policy without gradients (DRO's sampler; SmPO's ``policy`` inversion).  ``process``
    (a ``NoiseProcess``) is the forward process of the training ``scheduler``: timesteps, noisy inputs
    and targets.  ``denoise(network, x, t, hidden, added)`` calls a network of the base model's family
    (``harness.models.families.ModelFamily.denoise``), its inputs already in the network's dtype.
    """

    def __init__(
        self,
        *,
        policy: torch.nn.Module,
        unwrapped: torch.nn.Module,
        reference: Callable[[], tuple[torch.nn.Module, Any]],
        scheduler: Any,
        process: NoiseProcess,
        denoise: Callable[..., torch.Tensor],
        autocast: Callable[[], Any] = nullcontext,
        reference_in_own_dtype: bool = False,
    ) -> None:
        self._policy = policy
        self._unwrapped = unwrapped
        self._reference = reference
        self.scheduler = scheduler
        self.process = process
        self._denoise = denoise
        self.autocast = autocast
        # TrainConfig.reference_dtype: the reference runs outside autocast and returns its own dtype.
        self.reference_in_own_dtype = reference_in_own_dtype
        self.unet_evals = 0

    def _run(
        self, unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond, own_dtype: bool = False
    ) -> torch.Tensor:
        self.unet_evals += x.shape[0]
        dtype = next(unet.parameters()).dtype
        added = None if cond.added is None else {k: v.to(dtype) for k, v in cond.added.items()}
        with nullcontext() if own_dtype else self.autocast():
            out = self._denoise(unet, x.to(dtype), t, cond.hidden.to(dtype), added)
        return out if own_dtype else out.float()

    def policy(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self._run(self._policy, x, t, cond)

    @torch.no_grad()
    def reference(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        unet, context = self._reference()
        with context:
            return self._run(unet, x, t, cond, own_dtype=self.reference_in_own_dtype)

    @torch.no_grad()
    def snapshot(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self._run(self._unwrapped, x, t, cond)


def per_sample_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension of the squared error: one number per sample, in fp32; computed in
    the prediction's dtype when that is fp16 or bf16 (a ``reference_dtype`` reference, as the public scripts'
    ``(ref_pred - target).pow(2).mean(...)``, target and all in that dtype: Salesforce DPO train.py:1137)."""
    dtype = pred.dtype if pred.dtype in (torch.float16, torch.bfloat16) else torch.float32
    return (pred.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(dim=1).float()


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise drawn on the CPU from the step's generator, so runs do not depend on the device."""
    return torch.randn(x.shape, generator=generator).to(x.device, x.dtype)


@dataclass
class Batch:
    """One micro-batch as the trainer hands it to a loss.

    ``latents``: the examples' images, image slot by image slot: for pairs all winners then all
    losers (2B), for single images B, for prompts only none.  ``means``: their VAE posterior means
    (equal to ``latents`` when ``latent_sample`` is off).  ``cond``: B conditionings of ``captions``
    (after caption dropout: "" where dropped).  ``keys``: content keys of the latents (same order),
    for per-image caches.  ``scores`` and ``labels``: per latent, the reward score and the label
    (``LabelledImages``: 1 desirable, 0 undesirable) where the data has them, NaN otherwise.
    ``generator``: the micro-step's only source of randomness (timesteps, noise, ...).
    """

    latents: torch.Tensor
    means: torch.Tensor
    cond: Cond
    keys: list[str]
    scores: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    generator: torch.Generator
    rollout: Rollout | None = None  # an ``Online`` spec's samples of this micro-step; None for offline data


def guided_velocity(
    network: Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Cond,
    uncond: Cond | None,
    guidance_scale: float,
) -> torch.Tensor:
    """The network's velocity at (x, t) with classifier-free guidance, as flow_grpo samples and trains
    (scripts/train_sd3.py:180-195): one call on [uncond; cond], the unconditional half detached (it carries no
    gradient); ``uncond`` None: the conditional prediction alone."""
    if uncond is None:
        return network(x, t, cond)
    both = network(torch.cat([x, x]), torch.cat([t, t]), Cond.cat([uncond, cond]))
    unconditional, conditional = both.chunk(2)
    unconditional = unconditional.detach()
    return unconditional + guidance_scale * (conditional - unconditional)


@dataclass
class Rollout:
    """One micro-step's online samples (``Online`` data): ``group_size`` trajectories per prompt of the batch.

    ``latents`` (N, S+1, C, H, W): each trajectory's states, pure noise first, the final sample last, at the
    sampler's levels ``sigmas`` (S+1, descending to 0; network timesteps ``timesteps`` = sigma x T, S).
    ``log_probs`` (N, W): the log-probability of each SDE step under the policy that sampled it, the W steps
    from ``window_start`` on (W = S, from 0, without a window; ``Online.window_size``).  ``rewards`` (N):
    the reward of each final sample.  ``groups`` (N): the index of its prompt in the batch (sample i belongs to
    prompt i mod B).  ``cond`` / ``uncond``: N conditionings, and the empty caption's for guidance (None
    without guidance)."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    rewards: torch.Tensor
    groups: torch.Tensor
    cond: Cond
    uncond: Cond | None
    guidance_scale: float
    noise_level: float
    window_start: int = 0

    def step(
        self, network: Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor], j: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sde_step`` of the window's step ``j`` (the sampler's ``window_start + j``, ``log_probs[:, j]``'s)
        under ``network`` (``models.policy``, ``models.reference``), at the recorded states: (the next state,
        its log-probability, the step's mean, std_t)."""
        k = self.window_start + j
        x = self.latents[:, k]
        velocity = guided_velocity(
            network, x, self.timesteps[k].expand(len(x)), self.cond, self.uncond, self.guidance_scale
        )
        return sde_step(
            velocity,
            x,
            self.sigmas[k],
            self.sigmas[k + 1],
            self.noise_level,
            float(self.sigmas[1]),
            x_next=self.latents[:, k + 1],
        )


@dataclass
class TrainingContext:
    """What a method may use of the run besides a batch, handed to ``setup`` and ``before_micro_step``.

    ``cache(name)`` is a directory for the method's own files, shared by every run that starts
    from the same weights (e.g. SmPO's inversions by the frozen reference) and by no other.
    """

    models: Models
    # The base model's scheduler for training (diffusers DDPMScheduler, or FlowMatchEulerDiscreteScheduler for
    # a flow-matching model); its config has the schedule.  ``models.process`` says how x_t is made.
    scheduler: Any
    latent_shape: tuple[int, int, int]  # (C, H, W) of one training latent
    grad_accum: int  # forward/backward passes per optimizer step
    captions: Sequence[str]  # every training example's caption, in data order (read on access)
    data_scores: np.ndarray  # every score the training data carries (NaN where missing); reads no image
    encode: Callable[[list[str]], Cond]  # captions -> conditioning, as the batches are encoded
    cache: Callable[[str], Path]
    device: torch.device
    # (step, micro) -> that micro-batch of this process, exactly as the trainer will hand it to ``loss`` (for a
    # method whose ``before_micro_step`` draws nothing from the generator): a look at the whole step ahead.
    batch: Callable[[int, int], Batch] | None = None


@dataclass(frozen=True)
class PublishedWeights:
    """A method's released UNet for a preset's base model (``harness run --pretrained``), and the reward
    that shaped its training data, if any (the leaderboard marks that metric for it)."""

    location: str  # hub id or local directory
    subfolder: str | None = "unet"
    signal: str | None = None  # a scorer name
    how: str = ""  # in words, for the leaderboard's note


class Method:
    """Base class of a training method.  Subclasses set the class attributes and ``loss``.

    A method's settings under a preset are its recipe, ``<method>.toml`` in the preset's recipe folders
    (``harness.plan.recipes``), applied on top of the settings the preset gives every method
    (``Preset.method_defaults``); a one-file plugin may give them inline instead, ``presets``: a preset's
    name -> its settings there, without sources.  A method with neither for a preset whose scale differs
    from the papers' (``toy``, ``tiny``) trains with the preset's defaults alone, and the harness warns that
    it does.
    """

    description: ClassVar[str] = ""
    Config: ClassVar[type[TrainConfig]] = TrainConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # a plugin's inline recipes (the built-in ones: files)
    published: ClassVar[dict[str, PublishedWeights]] = {}  # preset name -> the released UNet for its base model
    data: ClassVar[DataSpec] = Pairs()

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def data_spec(self) -> DataSpec:
        """What the trainer must read for this method (override when it depends on the config)."""
        return self.data

    def unet_evals_per_sample(self) -> float | None:
        """UNet evaluations per training sample (a pair, or an image) under ``self.config``, every forward pass
        counted (policy, reference, sampling, inversion): what the trainer measures as
        ``TrainResult.unet_evals_per_sample`` on one process.  Where the count depends on random draws, its
        expected value.  ``harness run --dry-run`` multiplies it by a training's samples; None (the default):
        the method does not state it."""
        return None

    def setup(self, context: TrainingContext) -> None:
        """Called once the models are ready, before any checkpoint is loaded."""

    def before_micro_step(self, context: TrainingContext, step: int, micro: int, generator: torch.Generator) -> None:
        """Called before each forward/backward (DRO refills its replay buffer here)."""

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must carry for an exact resume (DRO: the replay buffer)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def sampler(self, pipeline: Any) -> Any:
        """The pipeline used to generate with the trained UNet (default: unchanged)."""
        return pipeline
