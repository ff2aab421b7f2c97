"""Supervised fine-tuning: the plain denoising loss on preferred / expert images.

The baseline both DRO and SmPO compare against (SmPO's SD1.5 run starts from an
SFT model: pass this method's output as ``init_unet``).  Without an
``experts.jsonl`` it trains on the preferred image of every pair.

    loss = mean_i err(policy, x_t^i)      err: mean over C, H, W of the squared error to the target

Epsilon models: target eps at x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t uniform.  Flow form (SD3
and other flow-matching bases, ``models.process``): the velocity error, target eps - x0 at
x_t = (1 - sigma) x0 + sigma eps, network timestep sigma T (T = 1000), sigma from SD3's training
density (u ~ logit-normal(0, 1) picking a point of the scheduler's shifted grid, shift 3), with no
loss weighting and no preconditioning: diffusers' SD3 fine-tuning loss with ``weighting_scheme=
"logit_normal"`` and ``precondition_outputs=0``.  Nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import Batch, Experts, Method, Models, TrainConfig, per_sample_error, register_method


@dataclass
class SFTConfig(TrainConfig):
    # No paper of its own: the standard diffusers fine-tuning recipe (AdamW, constant lr 1e-5).
    lr: float = 1e-5
    max_steps: int = 2000
    caption_dropout: float = 0.2


@register_method("sft")
class SFT(Method):
    description = "Supervised fine-tuning on preferred / expert images (the DRO and SmPO baseline)"
    Config = SFTConfig
    data = Experts()

    def unet_evals_per_sample(self) -> float:
        return 1.0  # the policy on the image

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        latents_t, t, target = models.process.noisy(batch.latents, batch.generator)
        error = per_sample_error(models.policy(latents_t, t, batch.cond), target)
        return error.mean(), {"model_mse": error.mean().item()}
