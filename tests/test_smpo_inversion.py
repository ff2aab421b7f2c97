"""SmPO's ReNoise inversion runs as the public code ran it (SmPO train.py:1002-1022), on any diffusers version.

JaydenLyh/SmPO pins diffusers 0.20.0 (``requirements.txt:3``) and inverts each sample through
``inverse_scheduler.timesteps[timesteps < t]`` (``train.py:1002``), evaluating the network twice per step at
that timestep (``:1009-1022``).  diffusers 0.20.0's ``DDIMInverseScheduler.set_timesteps`` rolls its grid by
one and replaces the first entry by the second minus the stride (``scheduling_ddim_inverse.py:292-293``), and
``step`` goes from the timestep it is given to that timestep + T // k (``:338``), a source below 0 being the
image at the initial alpha (``:342``; ``set_alpha_to_one`` false in the real configs: alpha-bar_0).  That
semantics is restated here, independently of ``methods/smpo.py``, and checked level by level on the SD1.5
(5 steps) and SDXL (10 steps) stand-in schedulers, which carry the hub configs' values.  Our old convention,
today's diffusers (the network at the destination, no roll), stays one setting away: ``unrolled``.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.api import Cond, Models, TrainingContext
from harness.models import _scheduler
from methods.smpo import SmPO, SmPOConfig, renoise_inversion
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

T = 1000
TS = (50, 150, 250, 500, 801, 802, 950)
# The level x_t ends at, by hand: rolled, the smallest grid level at or above t (the top one above it);
# unrolled, the largest below t (-1: none, the image itself is x_t).
FINAL_LEVEL = {
    ("sd15", "rolled"): {50: 201, 150: 201, 250: 401, 500: 601, 801: 801, 802: 801, 950: 801},
    ("sdxl", "rolled"): {50: 101, 150: 201, 250: 301, 500: 501, 801: 801, 802: 901, 950: 901},
    ("sd15", "unrolled"): {50: 1, 150: 1, 250: 201, 500: 401, 801: 601, 802: 801, 950: 801},
    ("sdxl", "unrolled"): {50: 1, 150: 101, 250: 201, 500: 401, 801: 701, 802: 801, 950: 901},
}
STEPS = {"sd15": 5, "sdxl": 10}


def alphas_bar() -> torch.Tensor:
    """Both hub configs' schedule: scaled_linear betas 0.00085 .. 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def evaluated_timesteps(steps: int, levels: str, t: int) -> tuple[list[int], int]:
    """The timesteps the network sees (once per ReNoise evaluation) and the level x_t ends at.

    The leading grid with steps_offset 1 (1, 1 + stride, ...); each step goes from g - stride to g.  Rolled
    (diffusers 0.20.0): the network sees the source g - stride, the grid being np.roll'ed with its first entry
    set to the second minus the stride.  Unrolled: it sees the destination g.  Either way a step is taken when
    the timestep the network sees lies below t (train.py:1002)."""
    stride = T // steps
    grid = list(np.arange(steps) * stride + 1)
    if levels == "rolled":
        seen = list(np.roll(grid, 1))
        seen[0] = seen[1] - stride
    else:
        seen = grid
    taken = [int(tau) for tau in seen if tau < t]
    final = (taken[-1] + stride if levels == "rolled" else taken[-1]) if taken else -1
    return [tau for tau in taken for _ in range(2)], final


class ConstantNoise(torch.nn.Module):
    """The noise-exact network of one straight path x0 -> eps: predicts eps whatever its input, so each DDIM
    step is exact; records the timesteps of every call."""

    def __init__(self, eps: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("eps", eps)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # Models reads the network's dtype from a parameter
        self.timesteps: list[int] = []

    def forward(self, x, t, encoder_hidden_states, added_cond_kwargs=None):
        self.timesteps += [int(tau) for tau in t]
        return SimpleNamespace(sample=self.eps.expand_as(x))


def invert(layout: str, levels: str | None, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ConstantNoise]:
    """x0 (values beyond +-1, where a clipping scheduler would bite), eps, the inverted latent at t, the network."""
    generator = torch.Generator().manual_seed(3)
    x0, eps = 2.5 * torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    net = ConstantNoise(eps)
    models = Models(policy=net, unwrapped=net, reference=lambda: (net, nullcontext()), scheduler=_scheduler(layout))
    config = SmPOConfig(inversion_steps=STEPS[layout], **({"inversion_levels": levels} if levels else {}))
    method = SmPO(config)  # inverter "policy", as the public code (train.py:1009): the trained network, no_grad
    method.setup(TrainingContext(models=models, scheduler=models.scheduler, latent_shape=(4, 8, 8), grad_accum=1,
                                 captions=[], data_scores=np.array([]), encode=None,
                                 cache=lambda name: Path("/nonexistent") / name, device=torch.device("cpu")))
    z = renoise_inversion(models.snapshot, x0, Cond(torch.zeros(1, 5, 32)), torch.tensor([t]), method.inverse,
                          method.taus)
    return x0, eps, z, net


@pytest.mark.parametrize("levels", ["rolled", "unrolled"])
@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
@pytest.mark.parametrize("t", TS)
def test_inversion_evaluates_and_ends_where_the_convention_says(layout, levels, t):
    x0, eps, z, net = invert(layout, levels, t)
    seen, final = evaluated_timesteps(STEPS[layout], levels, t)
    assert final == FINAL_LEVEL[layout, levels][t]
    assert net.timesteps == seen
    abar = alphas_bar()
    if final < 0:
        torch.testing.assert_close(z, x0)
        return
    # The first step starts from the image at alpha-bar_0 (set_alpha_to_one false); every later one is exact.
    start = (x0 - (1 - abar[0]).sqrt() * eps) / abar[0].sqrt()
    expected = abar[final].sqrt() * start + (1 - abar[final]).sqrt() * eps
    torch.testing.assert_close(z, expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_the_default_is_the_public_rolled_grid(layout):
    """The SD1.5 grid of the issue: -199, 1, 201, 401, 601; SDXL's -99, 1, 101, ..., 801."""
    _, _, _, net = invert(layout, None, 999)
    stride = T // STEPS[layout]
    assert net.timesteps[::2] == [-stride + 1] + [1 + j * stride for j in range(STEPS[layout] - 1)]


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_stand_in_schedulers_carry_the_hub_configs_values(layout):
    """stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0 ``scheduler/scheduler_config.json``: clip_sample
    and set_alpha_to_one false, steps_offset 1, leading spacing; a DDIMInverseScheduler built from them (as SmPO
    builds one, train.py:471) takes them."""
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(_scheduler(layout).config).config
    assert (inverse.clip_sample, inverse.set_alpha_to_one, inverse.steps_offset, inverse.timestep_spacing) == (
        False, False, 1, "leading")
