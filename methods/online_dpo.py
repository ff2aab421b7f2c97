"""Online Diffusion-DPO on a flow-matching model, as flow_grpo trains SD3.5 (scripts/train_sd3_dpo.py).

The pairs are the policy's own samples (``Online`` data, the rollouts of methods/grpo.py's sampler): of each
prompt's group, the best-rewarded final sample is the winner and the worst the loser.  Each pair is then trained
with Diffusion-DPO's flow loss (methods/dpo.py: one sigma and one noise per pair, ``-0.5 * beta`` on velocity
errors) at ``int(sample_steps x timestep_fraction)`` independent draws of (sigma, noise), averaged.
The reference is the starting model (flow_grpo's ``ref_update_step`` left at its never-updating default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from harness.api import Batch, Method, Models, Online, register_method
from methods.dpo import dpo_logits, dpo_loss, forward_noised_pairs, pair_errors, pair_timesteps, preference_logs
from methods.grpo import OnlineConfig, online_spec


def best_and_worst(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group (in group order), the index of its highest and of its lowest reward (flow_grpo
    stat_tracking.py:41-54's ``dpo`` advantages); the first of equals."""
    winners, losers = [], []
    for group in groups.unique(sorted=True):
        members = (groups == group).nonzero().flatten()
        winners.append(members[rewards[members].argmax()])
        losers.append(members[rewards[members].argmin()])
    return torch.stack(winners), torch.stack(losers)


@dataclass
class OnlineDPOConfig(OnlineConfig):
    beta: float = field(
        default=100.0, metadata={"help": "the sigmoid's scale, Salesforce's convention: -0.5 * beta * (Dw - Dl)"}
    )


@register_method("online-dpo")
class OnlineDPO(Method):
    description = "Online DPO: the best and worst of each prompt's own samples as the pair (flow_grpo's SD3.5 DPO)"
    Config = OnlineDPOConfig

    def data_spec(self) -> Online:
        return online_spec(self.config)

    def unet_evals_per_sample(self) -> float:
        """Per prompt: its rollouts, then one pair's policy and reference errors per trained draw."""
        return self.config.rollout_unet_evals + 4 * self.config.trained_steps

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        rollout = batch.rollout
        winners, losers = best_and_worst(rollout.rewards, rollout.groups)
        final = rollout.latents[:, -1]
        pairs = dataclasses.replace(
            batch, latents=torch.cat([final[winners], final[losers]]), cond=rollout.cond.index(winners)
        )
        loss, logs, draws = 0.0, {}, self.config.trained_steps
        for _ in range(draws):
            t = pair_timesteps(pairs, models)
            latents_t, target = forward_noised_pairs(pairs, t, models)
            model_err, ref_err = pair_errors(models, latents_t, t, pairs.cond.repeat(2), target)
            loss = loss + dpo_loss(*model_err, *ref_err, self.config.beta) / draws
            terms = preference_logs(dpo_logits(*model_err, *ref_err, self.config.beta), model_err, ref_err)
            logs = {name: logs.get(name, 0.0) + value / draws for name, value in terms.items()}
        gap = (rollout.rewards[winners] - rollout.rewards[losers]).mean().item()
        return loss, {**logs, "reward": rollout.rewards.mean().item(), "reward_gap": gap}
