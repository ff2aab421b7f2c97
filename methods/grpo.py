"""Flow-GRPO (Liu et al., arXiv 2505.05470; yifan123/flow_grpo): online policy gradient on a flow-matching model.

The trainer samples ``group_size`` images per prompt from the current policy with an SDE whose marginals are the
flow ODE's (``harness.api.sde_step``, noise scale ``noise_level``), recording each step's Gaussian
log-probability, and scores them with ``reward`` (``Online`` data).  Per prompt, the group's rewards become
advantages ``A = (r - mean_group) / (std + 1e-4)`` (``global_std``: the std of the whole batch's rewards,
flow_grpo's SD3 setting).  Each of the first ``timestep_fraction`` of the sampler's steps is then trained with
PPO's clipped objective on the ratio of the policy's log-probability of the recorded step to the sampler's,

    loss_j = mean(max(-A r_j, -A clip(r_j, 1 - eps, 1 + eps))) + beta * KL_j,   A clipped to +-adv_clip_max

``KL_j`` = ||mean_policy - mean_reference||^2 / (2 std_t^2) averaged over C, H, W (the two Gaussians' KL up to
flow_grpo's choice of std_t for the step's std), the loss averaged over steps.  CFG is applied while sampling
and in the log-probabilities, the unconditional prediction detached.

With ``sde_window_size`` W > 0 (flow_grpo's Fast variant, docs/methods.md gives its file:lines) the sampler
takes the SDE only on W consecutive steps at a random start (the ODE elsewhere), and those W steps are the ones
trained.

Deviation: flow_grpo samples a whole epoch first and updates twice on it (the second update off-policy); here
each micro-step samples and trains at once, so the ratio starts at 1 and the clip acts only through
accumulation within a step (see docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.api import (
    SCORERS,
    Batch,
    HarnessError,
    Method,
    Models,
    Online,
    TrainConfig,
    register_method,
    reward_weights,
)


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, global_std: bool) -> torch.Tensor:
    """Per-prompt standardized rewards (flow_grpo stat_tracking.py:17-31): ``(r - group mean) / (std + 1e-4)``,
    std the group's population std, or with ``global_std`` the whole batch's."""
    rewards = rewards.double()
    advantages = torch.empty_like(rewards)
    for group in groups.unique():
        members = groups == group
        mean = rewards[members].mean()
        std = (rewards if global_std else rewards[members]).std(unbiased=False)
        advantages[members] = (rewards[members] - mean) / (std + 1e-4)
    return advantages.float()


def clipped_objective(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float, adv_clip_max: float
) -> torch.Tensor:
    """PPO's clipped surrogate as flow_grpo trains it (scripts/train_sd3.py:881-893): mean over samples of
    ``max(-A r, -A clip(r, 1 - clip_range, 1 + clip_range))``, ``r = exp(log_prob - old_log_prob)``, A clipped."""
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(-advantages * ratio, -advantages * clipped).mean()


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std_t: torch.Tensor) -> torch.Tensor:
    """flow_grpo's KL term (scripts/train_sd3.py:895): ``||mean - ref_mean||^2`` averaged over C, H, W, over
    ``2 std_t^2``, averaged over samples."""
    return ((mean - ref_mean) ** 2).flatten(1).mean(dim=1).div(2 * std_t.flatten() ** 2).mean()


@dataclass
class OnlineConfig(TrainConfig):
    """The settings of an online method's rollouts (``Online`` data), flow_grpo's config/base.py and
    config/grpo.py (pickscore_sd3); the sd35 recipes give each value's line."""

    reward: str = field(
        default="pickscore",
        metadata={"help": "the reward: a scorer's name, or a weighted sum name:weight+name:weight"},
    )
    group_size: int = field(default=24, metadata={"help": "images sampled per prompt (the group compared)"})
    sample_steps: int = field(default=10, metadata={"help": "steps of the SDE sampler during training"})
    sample_guidance_scale: float = field(
        default=4.5, metadata={"help": "classifier-free guidance while sampling and in the log-probabilities"}
    )
    noise_level: float = field(default=0.7, metadata={"help": "the SDE's noise scale (std_t = level sqrt(s/(1-s)))"})
    timestep_fraction: float = field(
        default=0.99, metadata={"help": "int(sample_steps x fraction) timesteps trained per sample"}
    )
    sde_window_size: int = field(
        default=0,
        metadata={
            "help": "flow_grpo's Fast sampler: the SDE on this many consecutive steps, the ODE elsewhere (0: off)"
        },
    )
    sde_window_end: int = field(
        default=0, metadata={"help": "the SDE window lies within the first this many steps (0: all)"}
    )
    lr: float = 3e-4
    weight_decay: float = 1e-4
    lora_rank: int = 32
    lora_alpha: float | None = 64.0
    caption_dropout: float = 0.0

    def validate(self) -> None:
        super().validate()
        for name in reward_weights(self.reward):
            SCORERS.get(name)  # an unknown scorer: one line naming the available ones
        if not 0 < self.timestep_fraction <= 1 or int(self.sample_steps * self.timestep_fraction) < 1:
            raise HarnessError(
                f"timestep_fraction must lie in (0, 1] and train at least one of the {self.sample_steps} steps"
            )
        online_spec(self)  # group_size, sample_steps and noise_level checked by the spec

    @property
    def trained_steps(self) -> int:
        return int(self.sample_steps * self.timestep_fraction)

    @property
    def guidance_halves(self) -> int:
        """Network rows per image and step: 2 with classifier-free guidance (conditional and unconditional)."""
        return 2 if self.sample_guidance_scale > 1 else 1

    @property
    def rollout_unet_evals(self) -> int:
        """UNet evaluations of one prompt's rollouts: its group through every step of the SDE sampler."""
        return self.group_size * self.sample_steps * self.guidance_halves


def online_spec(c: OnlineConfig) -> Online:
    """The rollouts a config's method trains on."""
    return Online(
        c.reward,
        c.group_size,
        c.sample_steps,
        c.sample_guidance_scale,
        c.noise_level,
        c.sde_window_size,
        c.sde_window_end,
    )


@dataclass
class GRPOConfig(OnlineConfig):
    clip_range: float = field(default=1e-4, metadata={"help": "PPO's ratio clip: [1 - clip_range, 1 + clip_range]"})
    adv_clip_max: float = field(default=5.0, metadata={"help": "advantages clipped to [-adv_clip_max, adv_clip_max]"})
    beta: float = field(default=0.01, metadata={"help": "weight of the KL penalty to the reference (0: none)"})
    global_std: bool = field(
        default=True, metadata={"help": "advantages divided by the batch's reward std, not each group's"}
    )

    def validate(self) -> None:
        super().validate()
        if self.clip_range <= 0 or self.adv_clip_max <= 0 or self.beta < 0:
            raise HarnessError("clip_range and adv_clip_max must be > 0 and beta >= 0")

    @property
    def trained_steps(self) -> int:
        """With an SDE window, the window's steps (flow_grpo scripts/train_sd3_fast.py:348-351), the only ones
        with a log-probability; without, the first ``timestep_fraction`` of the steps."""
        return self.sde_window_size or super().trained_steps


@register_method("grpo")
class GRPO(Method):
    description = "Flow-GRPO: online, group-relative policy gradient through an SDE sampler (Liu et al. 2025)"
    Config = GRPOConfig

    def data_spec(self) -> Online:
        return online_spec(self.config)

    def unet_evals_per_sample(self) -> float:
        """Per prompt: its rollouts, then the policy (and with the KL the reference) on the group at every
        trained step, with guidance as in sampling."""
        c = self.config
        return c.rollout_unet_evals + c.group_size * c.trained_steps * c.guidance_halves * (2 if c.beta > 0 else 1)

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        c, rollout = self.config, batch.rollout
        advantages = group_advantages(rollout.rewards, rollout.groups, c.global_std)
        steps = c.trained_steps
        loss, kl, ratio = 0.0, 0.0, 0.0
        for j in range(steps):
            _, log_prob, mean, std_t = rollout.step(models.policy, j)
            step_loss = clipped_objective(log_prob, rollout.log_probs[:, j], advantages, c.clip_range, c.adv_clip_max)
            if c.beta > 0:
                _, _, ref_mean, _ = rollout.step(models.reference, j)
                step_kl = kl_to_reference(mean, ref_mean, std_t)
                step_loss = step_loss + c.beta * step_kl
                kl += step_kl.item() / steps
            ratio += torch.exp(log_prob - rollout.log_probs[:, j]).mean().item() / steps
            loss = loss + step_loss / steps
        return loss, {"reward": rollout.rewards.mean().item(), "kl": kl, "ratio": ratio}
