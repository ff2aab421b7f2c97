"""The shared online loop's sampling half: an ``Online`` spec's rollouts, drawn from the policy as it trains.

At each micro-step the trainer hands ``OnlineSampler.rollout`` the batch's captions and conditionings and the
micro-step's generator: ``group_size`` trajectories per caption are sampled with the SDE of
``harness.api.noise.sde_step`` from the current weights (``Models.snapshot``: no gradient, counted in the UNet
evaluations), the final latents decoded and scored with the spec's reward through the scorer registry.  Every
draw comes from the micro-step's generator, so a resumed run samples what an uninterrupted one would: a
checkpoint needs no sampler state, and no reward is computed twice for the same step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from harness.api.data import Online
from harness.api.method import Batch, Models, Rollout, guided_velocity
from harness.api.noise import FlowMatching, sde_step
from harness.errors import HarnessError
from harness.scoring import get_scorer


class OnlineSampler:
    """Rollouts of ``spec`` from ``models``' policy on ``pipe``'s VAE; ``encode``: captions -> conditioning."""

    def __init__(
        self, spec: Online, pipe: Any, models: Models, encode: Any, latent_shape: tuple[int, int, int], device: Any
    ) -> None:
        if not isinstance(models.process, FlowMatching):
            raise HarnessError(
                f"online training samples with a flow-matching SDE; this base model's process is "
                f"{type(models.process).__name__} (use an SD3-family base: sd35, toy-flow, tiny-flow)"
            )
        self.spec, self.pipe, self.models = spec, pipe, models
        self.latent_shape, self.device = latent_shape, device
        self.scorers = {name: get_scorer(name) for name in spec.weights}
        self.reward_calls: dict[str, int] = {}  # images each scorer has scored (the trainer counts from here)
        grid = copy.deepcopy(models.scheduler)
        grid.set_timesteps(spec.num_steps)
        self.sigmas = grid.sigmas.float().to(device)
        self.timesteps = (self.sigmas[:-1] * grid.config.num_train_timesteps).to(device)
        self.uncond = encode([""]) if spec.guidance_scale > 1 else None

    @torch.no_grad()
    def rollout(self, batch: Batch, captions: list[str]) -> Rollout:
        """``batch``'s rollouts, rewarded against ``captions``, its examples' own: a caption that caption
        dropout replaced by the empty one still conditions the sampling as the batch says, and the reward
        rates the image against the caption the example has (the empty one is no toy-world prompt)."""
        spec = self.spec
        group, prompts = spec.group_size, len(batch.captions)
        n = group * prompts
        cond = batch.cond.repeat(group)  # sample i belongs to prompt i mod B
        uncond = None if self.uncond is None else self.uncond.repeat(n).to(self.device)
        x = torch.randn((n, *self.latent_shape), generator=batch.generator).to(self.device)
        window = range(spec.num_steps)
        if spec.window_size:  # flow_grpo's Fast sampler: the SDE on a window, drawn per micro-step
            start = int(torch.randint(spec.window_end - spec.window_size + 1, (1,), generator=batch.generator))
            window = range(start, start + spec.window_size)
        states, log_probs = [x], []
        for j in range(spec.num_steps):
            t = self.timesteps[j].expand(n)
            velocity = guided_velocity(self.models.snapshot, x, t, cond, uncond, spec.guidance_scale)
            if j in window:
                x, log_prob, _, _ = sde_step(
                    velocity,
                    x,
                    self.sigmas[j],
                    self.sigmas[j + 1],
                    spec.noise_level,
                    float(self.sigmas[1]),
                    generator=batch.generator,
                )
                log_probs.append(log_prob)
            else:  # the flow ODE's Euler step (flow_grpo's sde_step at noise level 0)
                x = x + velocity.float() * (self.sigmas[j + 1] - self.sigmas[j])
            states.append(x)
        return Rollout(
            latents=torch.stack(states, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            sigmas=self.sigmas,
            timesteps=self.timesteps,
            rewards=self.reward(x, list(captions) * group).to(self.device),
            groups=torch.arange(n, device=self.device) % prompts,
            cond=cond,
            uncond=uncond,
            guidance_scale=spec.guidance_scale,
            noise_level=spec.noise_level,
            window_start=window.start,
        )

    def reward(self, latents: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The spec's weighted sum of scores of the decoded ``latents``; a lower-is-better scorer counts negated."""
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor") or 0.0
        dtype = next(vae.parameters()).dtype
        pixels = vae.decode((latents / vae.config.scaling_factor + shift).to(dtype)).sample
        images = self.pipe.image_processor.postprocess(pixels.float(), output_type="pil")
        total = torch.zeros(len(images))
        for name, weight in self.spec.weights.items():
            scorer = self.scorers[name]
            sign = 1.0 if scorer.higher_is_better else -1.0
            total += sign * weight * torch.tensor(scorer.score(images, captions), dtype=torch.float32)
            self.reward_calls[name] = self.reward_calls.get(name, 0) + len(images)
        return total
