"""MaPO: Margin-aware Preference Optimization (Hong, Paul, Lee, Rasul, Thorne, Jeong, arXiv 2406.06424).

Reference-free: only the trained UNet runs, on both images of a pair (one t and one noise per
pair, as Diffusion-DPO).  Its loss is the plain denoising error on the chosen image plus a
Bradley-Terry margin between bounded scores of the chosen and rejected images:

    e_w = err(policy, x_t^w, eps)     e_l = err(policy, x_t^l, eps)        same t and eps for the pair
    s(e) = w e / (exp(w e) - 1)        w = 0.5 ("snr_value"); s(0) = 1, s decreasing, s in (0, 1]
    m    = T (s(e_w) - s(e_l))         T = 1000, the noise scheduler's training timesteps
    loss = mean(e_w) - beta mean(log sigmoid(m))                           beta = 0.1

(mapo-t2i/mapo ``utils.compute_loss``: its ``log_odds`` is s(e_w) - s(e_l), its ``ratio_losses``
beta log sigmoid(m); the code comment says the factor T widens the margin over the whole denoising
process.)  The chosen term lowers e_w; the margin term lowers e_w and raises e_l; no reference network
anchors either, so nothing holds the policy near its start but the chosen term.

What s is: with the likelihood proxy p = exp(-w e), s = -log(p) * p / (1 - p), minus the
log-likelihood times the odds.  It is *not* the log-odds log(p / (1 - p)) = -w e - log(1 - exp(-w e))
that the name ``log_odds`` suggests (that one is unbounded as e -> 0; s lies in (0, 1]).  The
diffusers research prototype this code grew from (``examples/research_projects/diffusion_orpo``) used
e_w - e_l itself inside the log-sigmoid; a log-odds version was proposed there and not merged.

Numerics: s is computed as w e exp(-w e) / (-expm1(-w e)), equal to the public code's
w e / (exp(w e) - 1) wherever that is finite, but finite with finite gradients for every e >= 0:
exp(w e) - 1 overflows to inf in fp32 past w e ~ 88 (a NaN gradient) and loses digits for tiny w e,
where its Taylor series takes over (s(0) = 1, s'(0) = -w / 2).

Flow form (SD3 and other flow-matching bases, ``models.process``): e is the velocity error, the mean
over C, H, W of (v_theta(x_t, sigma T, c) - (eps - x0))^2 at x_t = (1 - sigma) x0 + sigma eps, one sigma
(SD3's training density: u ~ logit-normal(0, 1) picking a point of the scheduler's shifted grid, shift 3)
and one eps per pair.  The formula carries over unchanged, and so do its constants as numbers: T is the
scheduler's ``num_train_timesteps`` (1000 for SD3's flow scheduler too: its grid's size and the factor
from sigma to the network's timestep), widening the margin as in the code, and w = ``snr_value`` = 0.5
still scales the error inside s.  Nothing tunes them for flow
models: w e is now a velocity MSE, whose target eps - x0 has about twice the variance of eps on
unit-variance latents, so the same w puts the errors on another part of s's curve.

Data: Pick-a-Pic v2 train pairs without ties (the code's ``remove_ties`` default).  Published recipe
(SDXL; the weights are mapo-t2i/mapo-beta, a full SDXL UNet): the config below and its recipes,
methods/recipes/<preset>/mapo.toml, sources beside each value.  The public code and weights are SDXL
only; the sd15 recipe carries the same settings over at 512 px, unpublished.

Pairs are transformed as the public code does (``joint_pair_transform``, mapo utils.py:205-240): the source's
second image is resized to the first's size (PIL's default filter, :211), the two are stacked and resized,
flipped on one coin (:232) and centre-cropped together.  ``joint_pair_transform=False`` flips each image on its
own coin, at its own size, as the Salesforce DPO code.  The harness crops before it flips; with a centre crop the
two orders differ only where the margin is an odd number of pixels (one column).

Where the harness differs (neither changes the loss): 8-bit AdamW (bitsandbytes, the README's
``--use_8bit_adam``) is plain AdamW here; SDXL time ids are (res, res, 0, 0, res, res), where the public
code passes each pair's original size and crop corner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.api import (
    Batch,
    HarnessError,
    Method,
    Models,
    Pairs,
    PublishedWeights,
    TrainConfig,
    per_sample_error,
    register_method,
)
from methods.dpo import forward_noised_pairs, pair_timesteps


def mapo_score(error: torch.Tensor, snr_value: float) -> torch.Tensor:
    """``s(e) = w e / (exp(w e) - 1)`` with ``w = snr_value``; 1 at e = 0, falling to 0 as e grows."""
    x = snr_value * error
    # Below 1e-4 the series 1 - x/2 + x^2/12 is exact in fp32 (next term x^4/720) and has the right
    # gradient at 0; the closed form there would divide 0 by 0.
    small = x < 1e-4
    safe = torch.where(small, torch.ones_like(x), x)  # keeps the unused branch's gradient finite
    closed = safe * torch.exp(-safe) / -torch.expm1(-safe)
    return torch.where(small, 1 - x / 2 + x * x / 12, closed)


def mapo_margin(err_w: torch.Tensor, err_l: torch.Tensor, snr_value: float, timesteps: int) -> torch.Tensor:
    """Per pair ``T (s(e_w) - s(e_l))``: positive when the chosen image is the likelier one."""
    return timesteps * (mapo_score(err_w, snr_value) - mapo_score(err_l, snr_value))


def mapo_loss(err_w: torch.Tensor, err_l: torch.Tensor, beta: float, snr_value: float, timesteps: int) -> torch.Tensor:
    """``mean(e_w) - beta * mean(log sigmoid(T (s(e_w) - s(e_l))))``."""
    margin = mapo_margin(err_w, err_l, snr_value, timesteps)
    return err_w.mean() - beta * F.logsigmoid(margin).mean()


@dataclass
class MaPOConfig(TrainConfig):
    # mapo-t2i/mapo: args.py defaults (beta_mapo 0.1, snr_value 0.5, AdamW 0.9 / 0.999 / 1e-8, weight
    # decay 1e-2, max_grad_norm 1.0, ties removed, no caption dropout, flips unless --no_hflip,
    # latent_dist.sample()) and the README's training command (lr 1e-5 constant, no warmup, 2000 steps,
    # fp16 with the fp32 UNet as master weights, gradient checkpointing, fp16-fix VAE, 1024 px).
    beta: float = field(default=0.1, metadata={"help": "weight of the margin term (the chosen MSE's is 1)"})
    snr_value: float = field(default=0.5, metadata={"help": "w, scaling the error inside s(e) = w e / (exp(w e) - 1)"})
    lr: float = 1e-5
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_steps: int = 2000
    caption_dropout: float = 0.0
    # The pair transformed as one tensor: one flip coin, image_1 first resized to image_0's size (utils.py:205-240).
    joint_pair_transform: bool = True
    vae_fp32: bool = True  # train.py:181

    def validate(self) -> None:
        super().validate()
        if self.beta < 0:
            raise HarnessError(f"beta must be at least 0, not {self.beta}")
        if self.snr_value <= 0:
            raise HarnessError(f"snr_value must be positive, not {self.snr_value}")


@register_method("mapo")
class MaPO(Method):
    description = "MaPO: reference-free margin between chosen and rejected likelihoods + chosen MSE (Hong et al. 2024)"
    Config = MaPOConfig
    data = Pairs()
    # The public weights (a full SDXL UNet trained on the pairs' human labels: no reward shaped their data).
    published = {"sdxl": PublishedWeights("mapo-t2i/mapo-beta", subfolder=None)}  # the UNet at the repository root

    def unet_evals_per_sample(self) -> float:
        return 2.0  # the policy on the chosen and the rejected image: no reference

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        t = pair_timesteps(batch, models)
        latents_t, target = forward_noised_pairs(batch, t, models)
        err_w, err_l = per_sample_error(models.policy(latents_t, t, batch.cond.repeat(2)), target).chunk(2)
        timesteps = models.process.num_train_timesteps
        loss = mapo_loss(err_w, err_l, config.beta, config.snr_value, timesteps)
        margin = mapo_margin(err_w, err_l, config.snr_value, timesteps)
        return loss, {
            "implicit_acc": (margin > 0).float().mean().item(),
            "chosen_mse": err_w.mean().item(),
            "rejected_mse": err_l.mean().item(),
            "margin_loss": -F.logsigmoid(margin).mean().item(),
        }
