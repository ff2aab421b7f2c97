"""Diffusion-DPO (Wallace et al., arXiv 2311.12908).

Both images of a pair are noised with the same t and the same noise; the loss
pushes the policy's error on the winner down relative to the loser, measured
against the frozen reference.  beta follows the public Salesforce code:
``-0.5 * beta`` inside the sigmoid (the diffusers example's beta is twice as
large for the same run: its 2500 is our 5000).

    Dw = err(policy, x_t^w) - err(ref, x_t^w)      Dl likewise for the loser
    loss = mean(-log sigmoid(-0.5 * beta * (Dw - Dl)))

Flow form (SD3 and other flow-matching bases, ``models.process``): err is the velocity error,
the mean over C, H, W of (v_theta(x_t, sigma T, c) - (eps - x0))^2 at x_t = (1 - sigma) x0 + sigma eps
(T = 1000), with one sigma and one eps per pair; sigma is SD3's training density, u ~ logit-normal(0, 1)
picking a point of the scheduler's shifted grid (shift 3).  The loss formula carries over unchanged;
beta's scale does not: flow_grpo's SD3.5-Medium DPO (``scripts/train_sd3_dpo.py``, the same
``-0.5 * beta`` on a per-sample velocity MSE, same noise and t for the pair) uses beta = 100, fifty
times below the SD1.5 recipe's 5000.  The ``sd35`` preset takes that 100, ``toy-flow`` its own tuned 100 (at
lr 6e-5), and ``tiny-flow`` takes ``tiny``'s entry (the Config's 5000).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.api import (
    Batch,
    Method,
    Models,
    Pairs,
    PublishedWeights,
    TrainConfig,
    per_sample_error,
    randn_like,
    register_method,
)


def dpo_logits(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    """Per-pair argument of the sigmoid: ``-0.5 * beta * (Dw - Dl)``; positive = the winner is favoured."""
    return -0.5 * beta * ((model_err_w - ref_err_w) - (model_err_l - ref_err_l))


def dpo_loss(
    model_err_w: torch.Tensor, model_err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, beta: float
) -> torch.Tensor:
    """``mean(-log sigmoid(-0.5 * beta * (Dw - Dl)))`` over per-sample squared errors (Salesforce beta)."""
    return -F.logsigmoid(dpo_logits(model_err_w, model_err_l, ref_err_w, ref_err_l, beta)).mean()


def pair_timesteps(batch: Batch, models: Models) -> torch.Tensor:
    """One t per pair, shared by its two images: the batch is [winners; losers]."""
    t = models.process.sample_timesteps(len(batch.cond), batch.generator)
    return t.repeat(2).to(batch.latents.device)


def forward_noised_pairs(batch: Batch, t: torch.Tensor, models: Models) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and the network's target there, one noise per pair (both images of a pair see the same)."""
    noise = randn_like(batch.latents[: len(batch.cond)], batch.generator).repeat(2, 1, 1, 1)
    return models.process.add_noise(batch.latents, noise, t), models.process.target(batch.latents, noise)


def pair_errors(models: Models, latents_t: torch.Tensor, t: torch.Tensor, cond, target: torch.Tensor):
    """Policy and reference errors on a stacked [winners; losers] batch, split into (w, l) halves."""
    model_err = per_sample_error(models.policy(latents_t, t, cond), target)
    ref_err = per_sample_error(models.reference(latents_t, t, cond), target)
    return model_err.chunk(2), ref_err.chunk(2)


def preference_logs(logits: torch.Tensor, model_err: tuple, ref_err: tuple) -> dict[str, float]:
    """The terms Diffusion-DPO's code logs: implicit accuracy and the two MSEs."""
    return {
        "implicit_acc": (logits > 0).float().mean().item(),
        "model_mse": torch.cat(model_err).mean().item(),
        "ref_mse": torch.cat(ref_err).mean().item(),
    }


@dataclass
class DPOConfig(TrainConfig):
    # Published SD1.5 launcher: beta 5000 (Salesforce convention), lr 1e-8 scaled by the effective
    # batch (2048 -> 2.048e-5), 2000 steps, 500 warmup, AdamW; 20% empty captions (code default).
    beta: float = field(
        default=5000.0, metadata={"help": "the sigmoid's scale, Salesforce's convention: -0.5 * beta * (Dw - Dl)"}
    )
    lr: float = 1e-8
    scale_lr: bool = True
    max_steps: int = 2000
    warmup_steps: int = 500
    caption_dropout: float = 0.2


@register_method("dpo")
class DPO(Method):
    description = "Diffusion-DPO: preference pairs, sigmoid loss vs a frozen reference (Wallace et al. 2023)"
    Config = DPOConfig
    data = Pairs()
    # Trained on Pick-a-Pic's human labels: no reward shaped their data.
    published = {
        "sd15": PublishedWeights("mhdang/dpo-sd1.5-text2image-v1"),
        "sdxl": PublishedWeights("mhdang/dpo-sdxl-text2image-v1"),
    }

    def unet_evals_per_sample(self) -> float:
        return 4.0  # policy and reference on the winner and the loser

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        t = pair_timesteps(batch, models)
        latents_t, target = forward_noised_pairs(batch, t, models)
        model_err, ref_err = pair_errors(models, latents_t, t, batch.cond.repeat(2), target)
        loss = dpo_loss(*model_err, *ref_err, self.config.beta)
        return loss, preference_logs(dpo_logits(*model_err, *ref_err, self.config.beta), model_err, ref_err)
