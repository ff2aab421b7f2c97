"""An example method plugin, complete in one file: fine-tuning on the desirable images only.

    L = E_{x0 labelled desirable, t, eps} || eps - eps_theta(x_t, t, c) ||^2

(RAFT-style: keep the good samples, train the plain denoising loss on them.)  On a flow-matching base
model (SD3) the same loss is the velocity error: target eps - x0 at x_t = (1 - sigma) x0 + sigma eps, from
``models.process``.  It reads single
images labelled desirable or undesirable, the data Diffusion-KTO reads; from a pairs data set
each pair's preferred image is desirable and the other not.  Use it with

    harness --plugin examples/desirable_sft.py run --methods desirable-sft,dpo
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import Batch, LabelledImages, Method, Models, TrainConfig, per_sample_error, register_method


@dataclass
class DesirableSFTConfig(TrainConfig):
    lr: float = 1e-5  # the usual diffusers fine-tuning lr (no paper of its own)
    max_steps: int = 2000


@register_method("desirable-sft")
class DesirableSFT(Method):
    description = "denoising loss on the desirable images only (an example plugin)"
    Config = DesirableSFTConfig
    data = LabelledImages()
    # On top of each preset's settings for every method (the toy preset: 300 steps of 16 images, ...).
    presets = {"toy": {"lr": 3e-5}, "tiny": {}}

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        # x_t, its timestep and the network's target, from the base model's own forward process.
        latents_t, t, target = models.process.noisy(batch.latents, batch.generator)
        error = per_sample_error(models.policy(latents_t, t, batch.cond), target)
        desirable = (batch.labels == 1.0).float().to(error.device)
        loss = (error * desirable).sum() / desirable.sum().clamp(min=1.0)
        return loss, {"model_mse": error.mean().item(), "desirable": desirable.mean().item()}
