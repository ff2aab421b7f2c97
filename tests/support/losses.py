"""Helpers of the methods' loss tests on an epsilon-prediction (SD1.5-shaped) network: batches, contexts,
a descent step, and the tiny UNet as policy and frozen reference."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from harness.api import Batch, Cond, Models, TrainingContext
from harness.models.families import SD15

LN2 = math.log(2.0)


def errors(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=generator) for _ in range(4)]


def make_models(tiny_models) -> Models:
    unet, scheduler = tiny_models
    policy = copy.deepcopy(unet)
    reference = copy.deepcopy(unet).requires_grad_(False)
    return SD15.models(
        policy=policy, unwrapped=policy, reference=lambda: (reference, nullcontext()), scheduler=scheduler
    )


def make_context(models: Models, cache_root=None, latent_shape=(4, 8, 8)) -> TrainingContext:
    """A real training context around hand-made networks (no data: no scores to range-check)."""
    return TrainingContext(
        models=models,
        scheduler=models.scheduler,
        latent_shape=latent_shape,
        grad_accum=1,
        captions=[],
        data_scores=np.array([]),
        encode=None,
        cache=lambda name: (cache_root or Path("/nonexistent")) / name,
        device=torch.device("cpu"),
    )


def make_batch(n_images: int, n_captions: int, seed: int = 0, scores: torch.Tensor | None = None) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(n_images, 4, 8, 8, generator=generator)
    cond = Cond(torch.randn(n_captions, 5, 32, generator=generator))
    scores = scores if scores is not None else torch.full((n_images,), math.nan)
    keys = [f"img{i}" for i in range(n_images)]
    return latents, cond, keys, scores


def batch_with(parts: tuple, step_seed: int) -> Batch:
    latents, cond, keys, scores = parts
    return Batch(
        latents=latents,
        means=latents,
        cond=cond,
        keys=keys,
        scores=scores,
        labels=torch.full_like(scores, float("nan")),
        captions=[f"c{i}" for i in range(len(cond))],
        generator=torch.Generator().manual_seed(step_seed),
    )


def descend(models: Models, loss: torch.Tensor, size: float = 1e-3) -> None:
    """A small normalised gradient step: a descent step whatever the loss's scale."""
    params = [p for p in models._policy.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = torch.sqrt(sum((g**2).sum() for g in grads if g is not None))
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= size * g / norm
