"""Supervised fine-tuning: the plain denoising loss on preferred / expert images.

The baseline both DRO and SmPO compare against (SmPO's SD1.5 run starts from an
SFT model: pass this method's output as ``init_unet``).  Without an
``experts.jsonl`` it trains on the preferred image of every pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import (Batch, Experts, Method, Models, TrainConfig, per_sample_error, randn_like, register_method,
                         sample_timesteps)


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
    presets = {
        "sd15": {"effective_batch_size": 256, "mixed_precision": "bf16"},
        "sdxl": {"effective_batch_size": 256, "mixed_precision": "bf16"},
        "toy": {},  # the toy preset's settings for every method
        "tiny": {},
    }

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        t = sample_timesteps(len(batch.cond), batch.generator, models.scheduler.config.num_train_timesteps)
        t = t.to(batch.latents.device)
        noise = randn_like(batch.latents, batch.generator)
        error = per_sample_error(models.policy(models.add_noise(batch.latents, noise, t), t, batch.cond), noise)
        return error.mean(), {"model_mse": error.mean().item()}
