"""The flow form written out, independently of harness.api.noise, for the methods' loss tests on a
flow-matching base model (SD3): SD3's shifted grid and logit-normal density, velocities and their errors,
and the batches those tests use.

The networks are the tiny SD3.5-Medium-shaped transformer of the ``tiny-sd3`` base model with SD3's
scheduler (FlowMatchEulerDiscreteScheduler, shift 3): the ``flow_nets`` fixture of tests/methods/conftest.py.
Each hand computation draws its own timesteps and noise from a generator seeded as the batch's, builds the
shifted grid from its formula, calls the transformer directly and applies the method's formula to the velocity
errors; nothing of it goes through ``models.process``.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import torch

from harness.api import Batch, Cond, Models
from harness.models.families import SD3

T = 1000
SHIFT = 3.0
LATENT = (16, 8, 8)  # tiny-sd3: 16 channels, 32 px / 4


def grid_sigma(index: torch.Tensor) -> torch.Tensor:
    """SD3's training grid: point i is sigma = (T - i) / T, shifted by shift s / (1 + (shift - 1) s)."""
    s = (T - index).float() / T
    return SHIFT * s / (1 + (SHIFT - 1) * s)


def logit_normal_sigmas(n: int, generator: torch.Generator) -> torch.Tensor:
    """SD3's training density: u = sigmoid(N(0, 1)) picks the grid point floor(u T)."""
    u = torch.sigmoid(torch.randn(n, generator=generator))
    return grid_sigma((u * T).long().clamp(max=T - 1))


def velocity(net: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
    with torch.no_grad():
        return net(
            hidden_states=x,
            timestep=sigma * T,
            encoder_hidden_states=cond.hidden,
            pooled_projections=cond.added["pooled_projections"],
        ).sample


def per_pixel_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def noised(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.view(-1, 1, 1, 1)
    return (1 - sigma) * x0 + sigma * eps


def velocity_errors(net, x0, eps, sigma, cond) -> torch.Tensor:
    """Per sample: mean of (v(x_t, sigma T) - (eps - x0))^2 at x_t = (1 - sigma) x0 + sigma eps."""
    return per_pixel_mean((velocity(net, noised(x0, eps, sigma), sigma, cond) - (eps - x0)) ** 2)


def flow_models(flow_nets, policy: torch.nn.Module | None = None) -> Models:
    trained, reference, scheduler = flow_nets
    policy = policy or copy.deepcopy(trained)
    return SD3.models(
        policy=policy, unwrapped=policy, reference=lambda: (reference, nullcontext()), scheduler=scheduler
    )


def flow_batch(n_images: int, n_captions: int, seed: int, step_seed: int, scores=None, labels=None) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(n_images, *LATENT, generator=generator)
    cond = Cond(
        torch.randn(n_captions, 6, 64, generator=generator),
        {"pooled_projections": torch.randn(n_captions, 64, generator=generator)},
    )
    nan = torch.full((n_images,), math.nan)
    return Batch(
        latents=latents,
        means=latents,
        cond=cond,
        keys=[f"img{seed}-{i}" for i in range(n_images)],
        scores=nan if scores is None else scores,
        labels=nan if labels is None else labels,
        captions=[f"caption {seed}-{i}" for i in range(n_captions)],
        generator=torch.Generator().manual_seed(step_seed),
    )


def pair_draws(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO-style draws by hand: one sigma per pair, then one noise per pair; both for [winners; losers]."""
    generator = torch.Generator().manual_seed(batch.generator.initial_seed())
    pairs = len(batch.cond)
    sigma = logit_normal_sigmas(pairs, generator).repeat(2)
    eps = torch.randn((pairs, *LATENT), generator=generator).repeat(2, 1, 1, 1)
    return sigma, eps
