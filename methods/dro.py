"""Diffusion-DRO (Wu, Ruan, Tseng, Shuai, arXiv 2510.18353, NeurIPS 2025).

Preference learning as ranking: pull the policy toward offline expert
demonstrations (the top-K images of the training set by a reward) and away from
its own online samples, with a hinge on the two implicit rewards:

    De = err(policy, x_t^e, eps_e) - err(ref, x_t^e, eps_e)
    Dp = err(policy, x_t^p, eps_p) - err(ref, x_t^p, eps_p)
    loss = mean(max(De - Dp + margin, 0))

The replay buffer, as the public code runs it (basiclab/DiffusionDRO ``train.py:654-714`` refills,
``:731`` samples, ``misc/buffer.py:49-127``; ``train.py:806-807`` refreshes the sampling network;
its sampler's levels are ``per_row_sigmas``).  A *row* is one expert image with its
caption and a trajectory the policy sampled **from that caption**: the caption goes
through the training prompt encoding once (caption dropout included), and from that
conditioning the policy samples from pure noise (DPM-Solver++, ``sampler_steps`` steps,
CFG 1, every timestep of the trajectory shifted by one random offset inside its stride),
keeping every visited state (t, x_t, eps_policy).  A refill turns the micro-batch's
experts into new rows (every ``refill_every`` forward/backward iterations, ``refill_rows``
of them); the buffer keeps the newest ``buffer_size`` rows.  A training sample picks a
row (distinct rows while there are enough) and one visited state of it: the expert term
noises the row's expert latent at that state's t with fresh noise, the policy term uses
the stored (x_t, eps_policy), and both see the row's conditioning.  The sampling network
is the current policy: the public code refreshes its snapshot after every optimizer step
(M = 1, ``train.py:806-807``), and the weights do not change in between.

Published configuration: 4 experts per forward/backward, refilled every iteration into a
buffer of 4 rows, so each optimizer step (accumulation 16) sees 64 fresh trajectories,
each from the prompt of the expert it is compared with.  ``refill_every`` > 1 or
``refill_rows`` below the batch size are cheaper variants (fewer sampler evaluations).

Flow form (SD3 and other flow-matching bases, ``models.process.kind == "flow"``; no published
recipe, the paper trains SD1.5).  The loss and the buffer are the same; errors are velocity errors
and the sampler integrates the probability-flow ODE dx/dsigma = v(x, sigma T, c) (T = 1000):

    De = err(policy, x_t^e, eps_e - x0) - err(ref, x_t^e, eps_e - x0)    x_t^e = (1 - sigma) x0 + sigma eps_e
    Dp = err(policy, x_t^p, v_p) - err(ref, x_t^p, v_p)                  (t = sigma T, x_t^p, v_p) from the buffer
    loss = mean(max(De - Dp + margin, 0))

    sampler (Euler, as SD3's own FlowMatchEulerDiscreteScheduler steps; CFG 1):
    x_0 ~ N(0, I);  v_k = v_policy(x_k, sigma_k T, c);  x_{k+1} = x_k + (sigma_{k+1} - sigma_k) v_k;
    k = 0 .. K-1 (K = ``sampler_steps``), sigma_K = 0; every (sigma_k T, x_k, v_k) is kept.

The levels sigma_k are points of the scheduler's shifted training grid s(j) (j = 0 .. T-1, s(0) = 1,
``process.sigmas``): sigma_k = s(k * stride + o), stride = T // K, with one offset o drawn uniformly
from {0, ..., stride - 1} per trajectory (``perturb_timesteps``; o = 0 without it: K levels from 1
toward 0).  The perturbation is on the grid's index, not on sigma itself, because that is what the
DDPM grid's offset is: mapped onto the flow grid rank for rank (DDPM t <-> j = T - 1 - t), the
perturbed DDPM grid above is exactly this distribution.  So the levels of many trajectories cover the
training grid evenly in index, at the model's own shifted spacing (not evenly in sigma, which would
put few levels near sigma = 1, where shift 3 concentrates SD3's training and sampling), and every
visited t is a point the training density draws: the expert term noises at t's the model was trained
at.  As in the DDPM form, the initial noise is taken as the state at the first (perturbed) level,
sigma_0 <= 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.api import (
    Batch,
    Cond,
    Experts,
    FlowMatching,
    Method,
    Models,
    PublishedWeights,
    TrainConfig,
    TrainingContext,
    per_sample_error,
    randn_like,
    register_method,
)


def dro_loss(
    model_err_expert: torch.Tensor,
    ref_err_expert: torch.Tensor,
    model_err_policy: torch.Tensor,
    ref_err_policy: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Hinge ranking loss ``mean(max(De - Dp + margin, 0))``; zero gradient once ``De - Dp <= -margin``."""
    expert_diff = model_err_expert - ref_err_expert
    policy_diff = model_err_policy - ref_err_policy
    return torch.relu(expert_diff - policy_diff + margin).mean()


def stride_offsets(n: int, stride: int, generator: torch.Generator, perturb: bool) -> torch.Tensor:
    """(n, 1) offsets, one per trajectory, drawn uniformly from [0, stride) (zeros when not ``perturb``)."""
    return torch.randint(0, stride, (n, 1), generator=generator) if perturb else torch.zeros(n, 1, dtype=torch.long)


def trajectory_timesteps(
    n: int, steps: int, generator: torch.Generator, num_train_timesteps: int = 1000, perturb: bool = True
) -> torch.Tensor:
    """(n, steps) decreasing timesteps: the grid ``stride * [steps-1, ..., 1, 0]`` (stride = T // steps),
    each trajectory shifted by its own offset drawn uniformly from [0, stride)."""
    stride = num_train_timesteps // steps
    grid = torch.arange(steps - 1, -1, -1) * stride
    return grid[None, :] + stride_offsets(n, stride, generator, perturb)


def flow_trajectory_timesteps(
    n: int, steps: int, generator: torch.Generator, process: FlowMatching, perturb: bool = True
) -> torch.Tensor:
    """(n, steps) decreasing flow timesteps ``sigma * T``: the training grid's points ``stride * [0, 1, ...,
    steps-1]`` (index 0: sigma = 1; stride = grid size // steps), each trajectory moved toward less noise by
    its own offset drawn uniformly from [0, stride)."""
    stride = len(process.sigmas) // steps
    grid = torch.arange(steps) * stride
    return process.timesteps_at(grid[None, :] + stride_offsets(n, stride, generator, perturb))


@torch.no_grad()
def sample_trajectories(
    models: Models,
    cond: Cond,
    shape: tuple[int, ...],
    timesteps: torch.Tensor,
    generator: torch.Generator,
    per_row_sigmas: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one trajectory per conditioning with the policy (CFG 1: the conditional prediction alone),
    the network seeing each row's own timesteps; return every visited state: x (n, steps, C, H, W) and
    the policy's eps at it (same shape).

    One DPM-Solver++ scheduler per row keeps each row's multistep history, while the network runs on the
    whole batch at once.  ``per_row_sigmas``: each row integrates on its own noise levels; False: every
    row on row 0's levels (its step k taken from row 0's sigma_k to sigma_k+1), as the public sampler
    (basiclab/DiffusionDRO ``misc/patch.py:57-58`` sets the levels from ``timesteps[:, 0]``, ``:185-195``
    swaps in each row's timesteps and history but not the levels).
    """
    from diffusers import DPMSolverMultistepScheduler

    n, steps = timesteps.shape
    schedulers = []
    for row in timesteps:
        scheduler = DPMSolverMultistepScheduler.from_config(
            models.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
        )
        scheduler.set_timesteps(timesteps=(row if per_row_sigmas else timesteps[0]).tolist())
        scheduler.timesteps = row.to(scheduler.timesteps)  # a step finds its index among the row's own timesteps
        schedulers.append(scheduler)
    device = cond.hidden.device
    x = torch.randn((n, *shape), generator=generator).to(device) * schedulers[0].init_noise_sigma
    xs, epss = [], []
    for i in range(steps):
        eps = models.snapshot(x, timesteps[:, i].to(device), cond)
        xs.append(x), epss.append(eps)
        x = torch.cat(
            [
                scheduler.step(eps[j : j + 1], scheduler.timesteps[i], x[j : j + 1]).prev_sample
                for j, scheduler in enumerate(schedulers)
            ]
        )
    return torch.stack(xs, dim=1), torch.stack(epss, dim=1)


@torch.no_grad()
def sample_flow_trajectories(
    models: Models,
    cond: Cond,
    shape: tuple[int, ...],
    timesteps: torch.Tensor,
    generator: torch.Generator,
    per_row_sigmas: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler steps of the probability-flow ODE from pure noise with the policy (CFG 1), each row on its own
    levels ``timesteps / T`` and then to sigma = 0: ``x <- x + (sigma_next - sigma) v``.  Returns every
    visited state x (n, steps, C, H, W) and the policy's velocity at it (same shape).  ``per_row_sigmas``
    False: every row steps between row 0's levels while the network sees its own, as the DDPM form's."""
    n, steps = timesteps.shape
    device = cond.hidden.device
    timesteps = timesteps.to(device)
    levels = timesteps if per_row_sigmas else timesteps[:1].expand(n, -1)
    sigmas = torch.cat([levels / models.process.num_train_timesteps, torch.zeros(n, 1, device=device)], dim=1)
    x = torch.randn((n, *shape), generator=generator).to(device)
    xs, velocities = [], []
    for i in range(steps):
        v = models.snapshot(x, timesteps[:, i], cond)
        xs.append(x), velocities.append(v)
        x = x + (sigmas[:, i + 1] - sigmas[:, i]).view(-1, *[1] * len(shape)) * v
    return torch.stack(xs, dim=1), torch.stack(velocities, dim=1)


@dataclass
class DROConfig(TrainConfig):
    # Paper App. A.2 / code defaults: AdamW lr 1e-4 constant, no warmup, clip 1.0 (an argument that never acts
    # in the code: the sd15 / sdxl presets do not clip), 4 images per GPU,
    # effective batch 256, 1600 steps, EMA 0.9999, margin 0.001, 20% empty captions, top-500 experts
    # ranked by HPSv2 (the paper's main setting; "pickscore" is its other one).
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 4
    max_steps: int = 1600
    ema_decay: float | None = 0.9999
    caption_dropout: float = 0.2
    margin: float = field(default=0.001, metadata={"help": "the hinge ranking loss's margin"})
    expert_top_k: int = field(
        default=500, metadata={"help": "experts kept: the top k training images by expert_scorer"}
    )
    expert_scorer: str = field(default="hpsv2", metadata={"help": "the scorer ranking the experts"})
    sampler_steps: int = field(default=20, metadata={"help": "steps of the sampler making each replay trajectory"})
    perturb_timesteps: bool = field(
        default=True, metadata={"help": "each trajectory's timesteps perturbed (one perturbation per trajectory)"}
    )
    buffer_size: int = field(
        default=4, metadata={"help": "replay buffer rows (expert + its own trajectory) kept, the newest (per process)"}
    )
    refill_every: int = field(
        default=1,
        metadata={"help": "forward/backward iterations between refills (public code: every one, train.py:655)"},
    )
    refill_rows: int | None = field(
        default=None, metadata={"help": "experts of the micro-batch made into rows per refill; None: all of them"}
    )
    per_row_sigmas: bool = field(
        default=True,
        metadata={
            "help": "each trajectory integrated on its own noise levels.  False: every trajectory of a refill on the "
            "first one's levels, the network still told its own timesteps, "
            "as the public sampler (misc/patch.py:57-58, 185-195): "
            "its negatives then lie at other levels than their labelled t"
        },
    )


@register_method("dro")
class DRO(Method):
    description = "Diffusion-DRO: expert demos vs the policy's own samples, hinge ranking loss (Wu et al. 2025)"
    Config = DROConfig
    # The repository's only recipe ranks its experts by HPSv2 (which of the paper's two expert settings the
    # released UNet is, its README does not say: see harness/results/published.py).
    published = {
        "sd15": PublishedWeights(
            "ylwu/diffusion-dro-sd1.5",
            signal="hpsv2",
            how="released DRO UNet: experts ranked by hpsv2 (the repository's recipe)",
        )
    }

    def data_spec(self) -> Experts:
        return Experts(scorer=self.config.expert_scorer, top_k=self.config.expert_top_k)

    def unet_evals_per_sample(self) -> float:
        """Policy and reference on the expert and the policy terms (4), plus a refill's trajectories, ``rows x
        sampler_steps``, spread over the ``refill_every`` micro-batches it serves: exact over whole refill periods
        (a run's first micro-batch always refills)."""
        config = self.config
        rows = config.batch_size if config.refill_rows is None else min(config.refill_rows, config.batch_size)
        return 4.0 + rows * config.sampler_steps / (config.batch_size * config.refill_every)

    def setup(self, context: TrainingContext) -> None:
        self.buffer: dict[str, torch.Tensor] = {}
        self.latent_shape = context.latent_shape
        self.grad_accum = context.grad_accum
        self.refill_due = True

    def before_micro_step(self, context: TrainingContext, step: int, micro: int, generator: torch.Generator) -> None:
        iteration = step * self.grad_accum + micro
        self.refill_due = not self.buffer or iteration % self.config.refill_every == 0

    def refill(self, batch: Batch, models: Models) -> None:
        """Make rows of the micro-batch's experts, each with a trajectory sampled from its own conditioning."""
        rows = len(batch.cond) if self.config.refill_rows is None else min(self.config.refill_rows, len(batch.cond))
        cond = batch.cond.index(slice(0, rows))
        timesteps, x, eps = self.sample(models, cond, batch.generator)
        # "eps": the policy's prediction at each state, its noise (or, on flow models, its velocity).
        new = {"t": timesteps.to(x.device), "x": x, "eps": eps, "x0": batch.latents[:rows], "hidden": cond.hidden}
        new.update({f"added.{k}": v for k, v in (cond.added or {}).items()})
        size = self.config.buffer_size
        self.buffer = {k: torch.cat([self.buffer[k], v])[-size:] if self.buffer else v[-size:] for k, v in new.items()}

    def sample(self, models: Models, cond: Cond, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One trajectory per conditioning with the sampler of the base model's family: (t, x, prediction)."""
        config, process = self.config, models.process
        if process.kind == "flow":
            timesteps = flow_trajectory_timesteps(
                len(cond), config.sampler_steps, generator, process, config.perturb_timesteps
            )
            return timesteps, *sample_flow_trajectories(
                models, cond, self.latent_shape, timesteps, generator, config.per_row_sigmas
            )
        timesteps = trajectory_timesteps(
            len(cond),
            config.sampler_steps,
            generator,
            models.scheduler.config.num_train_timesteps,
            config.perturb_timesteps,
        )
        return timesteps, *sample_trajectories(
            models, cond, self.latent_shape, timesteps, generator, config.per_row_sigmas
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.buffer)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buffer = dict(state)

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        if self.refill_due:
            self.refill(batch, models)
        n, rows, states = len(batch.cond), len(self.buffer["t"]), self.buffer["t"].shape[1]
        generator = batch.generator
        # As the public buffer (misc/buffer.py:106-110): distinct rows while it has enough, then with replacement.
        row = (
            torch.randperm(rows, generator=generator)[:n]
            if n <= rows
            else torch.randint(0, rows, (n,), generator=generator)
        )
        state = torch.randint(0, states, (n,), generator=generator)
        device = self.buffer["t"].device
        row, state = row.to(device), state.to(device)
        t = self.buffer["t"][row, state]
        cond = Cond(
            self.buffer["hidden"][row],
            {k[6:]: v[row] for k, v in self.buffer.items() if k.startswith("added.")} or None,
        )
        x0 = self.buffer["x0"][row]
        eps_expert = randn_like(x0, generator)
        # One forward per network for the expert and the policy terms together.
        x = torch.cat([models.process.add_noise(x0, eps_expert, t), self.buffer["x"][row, state]])
        target = torch.cat([models.process.target(x0, eps_expert), self.buffer["eps"][row, state]])
        times, both = torch.cat([t, t]), Cond.cat([cond, cond])
        model_err_e, model_err_p = per_sample_error(models.policy(x, times, both), target).chunk(2)
        ref_err_e, ref_err_p = per_sample_error(models.reference(x, times, both), target).chunk(2)
        loss = dro_loss(model_err_e, ref_err_e, model_err_p, ref_err_p, self.config.margin)
        expert_diff, policy_diff = (model_err_e - ref_err_e), (model_err_p - ref_err_p)
        return loss, {
            "expert_diff": expert_diff.mean().item(),
            "policy_diff": policy_diff.mean().item(),
            "hinge_active": (expert_diff - policy_diff + self.config.margin > 0).float().mean().item(),
            "model_mse_expert": model_err_e.mean().item(),
            "model_mse_policy": model_err_p.mean().item(),
        }
