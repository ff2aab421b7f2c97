"""Diffusion-DRO (Wu, Ruan, Tseng, Shuai, arXiv 2510.18353, NeurIPS 2025).

Preference learning as ranking: pull the policy toward offline expert
demonstrations (the top-K images of the training set by a reward) and away from
its own online samples, with a hinge on the two implicit rewards:

    De = err(policy, x_t^e, eps_e) - err(ref, x_t^e, eps_e)
    Dp = err(policy, x_t^p, eps_p) - err(ref, x_t^p, eps_p)
    loss = mean(max(De - Dp + margin, 0))

The replay buffer, as the public code runs it.  A *row* is one expert image with its
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
(M = 1), and the weights do not change in between.

Published configuration: 4 experts per forward/backward, refilled every iteration into a
buffer of 4 rows, so each optimizer step (accumulation 16) sees 64 fresh trajectories,
each from the prompt of the expert it is compared with.  ``refill_every`` > 1 or
``refill_rows`` below the batch size are cheaper variants (fewer sampler evaluations).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from harness.api import (Batch, Cond, Experts, Method, Models, PublishedWeights, TrainConfig, TrainingContext,
                         per_sample_error, randn_like, register_method)


def dro_loss(model_err_expert: torch.Tensor, ref_err_expert: torch.Tensor, model_err_policy: torch.Tensor,
             ref_err_policy: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge ranking loss ``mean(max(De - Dp + margin, 0))``; zero gradient once ``De - Dp <= -margin``."""
    expert_diff = model_err_expert - ref_err_expert
    policy_diff = model_err_policy - ref_err_policy
    return torch.relu(expert_diff - policy_diff + margin).mean()


def trajectory_timesteps(n: int, steps: int, generator: torch.Generator, num_train_timesteps: int = 1000,
                         perturb: bool = True) -> torch.Tensor:
    """(n, steps) decreasing timesteps: the grid ``stride * [steps-1, ..., 1, 0]`` (stride = T // steps),
    each trajectory shifted by its own offset drawn uniformly from [0, stride)."""
    stride = num_train_timesteps // steps
    grid = torch.arange(steps - 1, -1, -1) * stride
    offsets = torch.randint(0, stride, (n, 1), generator=generator) if perturb else torch.zeros(n, 1, dtype=torch.long)
    return grid[None, :] + offsets


@torch.no_grad()
def sample_trajectories(models: Models, cond: Cond, shape: tuple[int, ...], timesteps: torch.Tensor,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one trajectory per conditioning with the policy (CFG 1: the conditional prediction alone),
    each row on its own timesteps; return every visited state: x (n, steps, C, H, W) and the policy's
    eps at it (same shape).

    One DPM-Solver++ scheduler per row keeps each row's multistep history on its own timesteps, while
    the network runs on the whole batch at once.
    """
    from diffusers import DPMSolverMultistepScheduler

    n, steps = timesteps.shape
    schedulers = []
    for row in timesteps:
        scheduler = DPMSolverMultistepScheduler.from_config(models.scheduler.config, algorithm_type="dpmsolver++",
                                                            solver_order=2)
        scheduler.set_timesteps(timesteps=row.tolist())
        schedulers.append(scheduler)
    device = cond.hidden.device
    x = torch.randn((n, *shape), generator=generator).to(device) * schedulers[0].init_noise_sigma
    xs, epss = [], []
    for i in range(steps):
        eps = models.snapshot(x, timesteps[:, i].to(device), cond)
        xs.append(x), epss.append(eps)
        x = torch.cat([scheduler.step(eps[j:j + 1], scheduler.timesteps[i], x[j:j + 1]).prev_sample
                       for j, scheduler in enumerate(schedulers)])
    return torch.stack(xs, dim=1), torch.stack(epss, dim=1)


@dataclass
class DROConfig(TrainConfig):
    # Paper App. A.2 / code defaults: AdamW lr 1e-4 constant, no warmup, clip 1.0, 4 images per GPU,
    # effective batch 256, 1600 steps, EMA 0.9999, margin 0.001, 20% empty captions, top-500 experts
    # ranked by HPSv2 (the paper's main setting; "pickscore" is its other one).
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 4
    max_steps: int = 1600
    ema_decay: float | None = 0.9999
    caption_dropout: float = 0.2
    margin: float = 0.001
    expert_top_k: int = 500
    expert_scorer: str = "hpsv2"
    sampler_steps: int = 20
    perturb_timesteps: bool = True
    buffer_size: int = 4  # rows (expert + its own trajectory) kept, the newest (per process)
    refill_every: int = 1  # forward/backward iterations between refills (public code: every one)
    refill_rows: int | None = None  # experts of the micro-batch made into rows per refill; None: all of them


@register_method("dro")
class DRO(Method):
    description = "Diffusion-DRO: expert demos vs the policy's own samples, hinge ranking loss (Wu et al. 2025)"
    Config = DROConfig
    presets = {
        # 4 GPUs x 4 images x 16 accumulation = 256; bf16 weights as the public code (no fp32 master copy),
        # its EMA kept on the CPU between updates.
        "sd15": {"effective_batch_size": 256, "mixed_precision": "bf16", "master_weights": "bf16", "ema_on_cpu": True},
        # The paper trains SD1.5 only: this is the same recipe carried over, not a published one.
        "sdxl": {"effective_batch_size": 256, "mixed_precision": "bf16", "master_weights": "bf16", "ema_on_cpu": True},
        # Not published for SD3: the SD1.5 recipe carried over.
        "sd35": {"effective_batch_size": 256, "master_weights": "bf16", "ema_on_cpu": True},
        # The published buffer semantics (each row an expert with a trajectory sampled from its own caption),
        # made cheaper: 4 of the 16 experts of each step become rows of a 16-row buffer (published: every
        # expert of the micro-batch, into a buffer of exactly those rows).  Measured (toy-fidelity delta
        # seen / unseen, docs/toy-world.md): every expert a row each step +0.035 / +0.037 at 9.0 UNet
        # evaluations per sample; 4 rows per step +0.033 / +0.041 at 5.25; 16 rows every second step
        # +0.032 / +0.025 at 6.5; all CIs above 0.  sampler_steps 5 (paper: 20): half the refill cost of 10
        # with the gains intact (10 steps +0.031 / +0.025, 5 steps +0.031 / +0.037).  expert_top_k 72: the
        # best 12.5% of the 576 base samples (synthesis lists the best 144); with 144 experts the unseen
        # gain's CI reached below 0, with 288 the gains vanished (measured).
        "toy": {"lr": 3e-5, "ema_decay": None, "expert_top_k": 72, "sampler_steps": 5, "buffer_size": 16,
                "refill_rows": 4},
        "tiny": {},
    }
    # The repository's only recipe ranks its experts by HPSv2 (which of the paper's two expert settings the
    # released UNet is, its README does not say: see harness/published.py).
    published = {"sd15": PublishedWeights("ylwu/diffusion-dro-sd1.5", signal="hpsv2",
                                          how="released DRO UNet: experts ranked by hpsv2 (the repository's recipe)")}

    def data_spec(self) -> Experts:
        return Experts(scorer=self.config.expert_scorer, top_k=self.config.expert_top_k)

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
        timesteps = trajectory_timesteps(rows, self.config.sampler_steps, batch.generator,
                                         models.scheduler.config.num_train_timesteps, self.config.perturb_timesteps)
        x, eps = sample_trajectories(models, cond, self.latent_shape, timesteps, batch.generator)
        new = {"t": timesteps.to(x.device), "x": x, "eps": eps, "x0": batch.latents[:rows], "hidden": cond.hidden}
        new.update({f"added.{k}": v for k, v in (cond.added or {}).items()})
        size = self.config.buffer_size
        self.buffer = {k: torch.cat([self.buffer[k], v])[-size:] if self.buffer else v[-size:] for k, v in new.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.buffer)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buffer = dict(state)

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        if self.refill_due:
            self.refill(batch, models)
        n, rows, states = len(batch.cond), len(self.buffer["t"]), self.buffer["t"].shape[1]
        generator = batch.generator
        # As the public buffer: distinct rows while the buffer has enough, then with replacement.
        row = torch.randperm(rows, generator=generator)[:n] if n <= rows else torch.randint(0, rows, (n,), generator=generator)
        state = torch.randint(0, states, (n,), generator=generator)
        device = self.buffer["t"].device
        row, state = row.to(device), state.to(device)
        t = self.buffer["t"][row, state]
        cond = Cond(self.buffer["hidden"][row],
                    {k[6:]: v[row] for k, v in self.buffer.items() if k.startswith("added.")} or None)
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
