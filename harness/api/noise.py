"""The forward process a base model was trained with, as a loss sees it.

A loss asks its ``models.process`` for timesteps, for the noisy input x_t and for the
network's target; the per-sample error ``per_sample_error(prediction, target)`` is then
the same kind of number for every base model, and one loss formula serves both families:

- ``EpsilonDiffusion`` (SD1.5, SDXL): discrete timesteps t ~ U{0, ..., T-1},
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, the network predicts eps.
- ``FlowMatching`` (SD3, SD3.5): a noise level sigma in (0, 1) drawn from SD3's logit-normal
  density and mapped through the scheduler's shifted grid, ``x_t = (1 - sigma) x0 + sigma eps``,
  the network predicts the velocity ``eps - x0``; its timestep input is ``sigma * T``.

Each process is built from the training scheduler (``from_scheduler``); the model's family
(``harness.models.families``) picks which.  Timesteps are what the network receives (an integer index,
or ``sigma * T`` as a float), so a method stores and passes them around without knowing which family it trains.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from harness.errors import HarnessError


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.to(like.device, torch.float32).view(-1, *([1] * (like.ndim - 1)))


class NoiseProcess(ABC):
    """How training turns a clean latent into the network's input and target."""

    kind: ClassVar[str]

    def __init__(self, num_train_timesteps: int) -> None:
        self.num_train_timesteps = num_train_timesteps

    @abstractmethod
    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` training timesteps drawn from the model's training density (on the CPU, from ``generator``)."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean latents ``x0``, standard normal ``noise`` and timesteps ``t``."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network should output at ``add_noise(x0, noise, t)``."""

    @abstractmethod
    def noise_of(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that takes ``x0`` to ``x_t`` at ``t`` (for an x_t not made by ``add_noise``: an inversion)."""

    @abstractmethod
    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio of x_t at ``t`` (signal variance over noise variance)."""

    def noisy(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) with a timestep and a noise of its own for each sample, drawn in that order
        from ``generator`` on the CPU (so a run does not depend on the device)."""
        t = self.sample_timesteps(len(x0), generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return self.add_noise(x0, noise, t), t, self.target(x0, noise)


class EpsilonDiffusion(NoiseProcess):
    """DDPM's discrete forward process with noise (epsilon) prediction."""

    kind = "epsilon"

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__(len(alphas_cumprod))
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> EpsilonDiffusion:
        """The process of a diffusers scheduler's betas (DDPM's); one line unless it predicts epsilon."""
        config = scheduler.config
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise HarnessError(
                f"the base model predicts {prediction!r}; training supports epsilon-prediction and flow-matching models"
            )
        from diffusers import DDPMScheduler

        return cls(DDPMScheduler.from_config(config).alphas_cumprod)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _per_sample(self.alphas_cumprod.to(like.device)[t.to(like.device).long()], like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def noise_of(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar / (1 - abar)


class FlowMatching(NoiseProcess):
    """Rectified flow as SD3 trains it: ``x_t = (1 - sigma) x0 + sigma eps``, velocity target ``eps - x0``.

    Timestep density: u ~ logit-normal(``logit_mean``, ``logit_std``) picks a point of the
    scheduler's training grid (``sigmas``, already shifted by the model's ``shift``), as
    diffusers' SD3 scripts sample with ``weighting_scheme="logit_normal"`` (whose loss weight is 1).
    """

    kind = "flow"

    def __init__(
        self, sigmas: torch.Tensor, num_train_timesteps: int, logit_mean: float = 0.0, logit_std: float = 1.0
    ) -> None:
        super().__init__(num_train_timesteps)
        self.sigmas = sigmas.to(torch.float32)  # descending: index 0 is the noisiest level
        self.logit_mean = logit_mean
        self.logit_std = logit_std

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> FlowMatching:
        """The process of a diffusers flow-match scheduler: its training grid, whatever sampling did to this one."""
        config = scheduler.config
        grid = type(scheduler).from_config(config)
        return cls(grid.sigmas[: config.num_train_timesteps].clone(), config.num_train_timesteps)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator))
        return self.timesteps_at((u * len(self.sigmas)).long().clamp(max=len(self.sigmas) - 1))

    def timesteps_at(self, index: torch.Tensor) -> torch.Tensor:
        """The timesteps (``sigma * T``) of the training grid's points ``index`` (0: sigma = 1, the noisiest)."""
        return self.sigmas[index] * self.num_train_timesteps

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _per_sample(t / self.num_train_timesteps, like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def noise_of(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma(t, x_t)
        return (x_t - (1 - sigma) * x0) / sigma

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        sigma = t.float() / self.num_train_timesteps
        return ((1 - sigma) / sigma) ** 2


def sde_step(
    velocity: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float,
    sigma_max: float,
    *,
    x_next: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of Flow-GRPO's reverse-time SDE from level ``sigma`` to ``sigma_next`` (< sigma), in fp32.

    The marginals are those of the flow ODE; the step is Gaussian, ``x_next ~ N(mean, (std_t sqrt(sigma -
    sigma_next))^2)`` with ``std_t = noise_level sqrt(sigma / (1 - sigma))`` (``sigma_max``, the grid's second
    level, stands in for sigma = 1) and ``mean = x (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) /
    (2 sigma)) dt``, dt = sigma_next - sigma (flow_grpo diffusers_patch/sd3_sde_with_logprob.py:44-55).
    ``x_next`` None: drawn with noise from ``generator`` (on the CPU, so runs do not depend on the device).
    Returns (x_next, its log-probability averaged over all but the batch dimension, mean, std_t); ``sigma``
    and ``sigma_next`` are scalars or one per sample.
    """
    velocity, x = velocity.float(), x.float()
    sigma = _per_sample(torch.as_tensor(sigma, dtype=torch.float32, device=x.device), x)
    sigma_next = _per_sample(torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device), x)
    dt = sigma_next - sigma
    std_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, torch.full_like(sigma, sigma_max), sigma))) * noise_level
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + velocity * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    step_std = std_t * torch.sqrt(-dt)
    if x_next is None:
        x_next = mean + step_std * torch.randn(x.shape, generator=generator).to(x.device)
    x_next = x_next.detach().float()
    log_prob = -((x_next - mean) ** 2) / (2 * step_std**2) - torch.log(step_std) - 0.5 * math.log(2 * math.pi)
    return x_next, log_prob.flatten(1).mean(dim=1), mean, std_t
