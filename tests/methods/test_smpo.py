"""SmPO: its smoothed loss against the formula, the score range it accepts, one real step on a tiny UNet with
each inverter, its ReNoise inversion as the public code ran it (SmPO train.py:1002-1022), and its flow form
(SD3)."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.api import Cond, HarnessError, Models, TrainingContext, per_sample_error
from harness.models.families import SD3, SD15, SDXL
from harness.testing.tiny_models import _scheduler
from methods.smpo import (
    PICKSCORE_HI,
    PICKSCORE_LO,
    SmPO,
    SmPOConfig,
    check_score_range,
    flow_inverse_timesteps,
    renoise_inversion,
    renoise_trajectory,
    smpo_loss,
    smpo_probability,
)
from support.flow import LATENT, T, flow_batch, flow_models, grid_sigma, logit_normal_sigmas, per_pixel_mean, velocity
from support.losses import LN2, batch_with, descend, errors, make_batch, make_context, make_models
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def test_smpo_probability_normalises_scores_and_lies_in_published_range():
    lo, hi = PICKSCORE_LO, PICKSCORE_HI
    p = smpo_probability(torch.tensor([hi, 0.2, 0.2]), torch.tensor([lo, 0.2, 0.19]), lo, hi)
    assert p[0].item() == pytest.approx(1 / (1 + math.exp(-1.0)))  # the widest gap: sigmoid(1) = 0.731
    assert p[1].item() == pytest.approx(0.5)
    assert 0.5 < p[2].item() < p[0].item()
    # Reversed scores give 1 - p: the loss then treats the pair as if reordered.
    assert smpo_probability(torch.tensor(0.19), torch.tensor(0.2), lo, hi).item() == pytest.approx(1 - p[2].item())


def test_smpo_loss_is_dpo_with_beta_scaled_by_ten_times_2p_minus_1():
    mw, ml, rw, rl = errors()
    p = torch.linspace(0.3, 0.73, len(mw))
    beta = 2000.0
    logits = -0.5 * beta * 10 * (2 * p - 1) * ((mw - rw) - (ml - rl))
    assert torch.allclose(smpo_loss(mw, ml, rw, rl, p, beta), -torch.nn.functional.logsigmoid(logits).mean())


def test_smpo_with_equal_scores_has_zero_gradient():
    mw, ml, rw, rl = (e.requires_grad_() for e in errors())
    p = smpo_probability(torch.full((6,), 0.2), torch.full((6,), 0.2), PICKSCORE_LO, PICKSCORE_HI)
    smpo_loss(mw, ml, rw.detach(), rl.detach(), p, 2000.0).backward()
    assert torch.count_nonzero(mw.grad) == 0 and torch.count_nonzero(ml.grad) == 0


def test_smpo_p_from_raw_pickscore_cosines_and_the_published_bounds():
    """Stated from the public preprocessing: s' = (s - lo) / (hi - lo) on PickScore's raw cosine,
    p = exp(s'_w) / (exp(s'_w) + exp(s'_l)), and 10 (2p - 1) scales beta."""
    cos_w, cos_l = torch.tensor([0.2412, 0.2010, 0.1800]), torch.tensor([0.2100, 0.2090, 0.1800])
    norm_w, norm_l = ((c - 0.11543526500463486) / (0.28201571106910706 - 0.11543526500463486) for c in (cos_w, cos_l))
    expected = torch.exp(norm_w) / (torch.exp(norm_w) + torch.exp(norm_l))
    p = smpo_probability(cos_w, cos_l, PICKSCORE_LO, PICKSCORE_HI)
    torch.testing.assert_close(p, expected)
    assert 0.5 < p[0] < 0.73 and p[1] < 0.5 and p[2] == 0.5  # a disagreeing reward flips the sign; equal: no gradient
    check_score_range(torch.cat([cos_w, cos_l]).numpy(), PICKSCORE_LO, PICKSCORE_HI, "pickscore-cosine")


@pytest.mark.parametrize(
    "scores, message",
    [
        ([21.3, 20.9], "outside the bounds"),  # PickScore's 100*cos against the raw-cosine bounds: p would saturate
        ([0.21, float("nan")], "have no score"),
    ],
)
def test_smpo_scores_off_the_bounds_scale_are_an_error(scores, message):

    with pytest.raises(HarnessError, match=message):
        check_score_range(torch.tensor(scores).numpy(), PICKSCORE_LO, PICKSCORE_HI, "pickscore-cosine")


def test_smpo_reference_inversion_starts_at_ln2_and_one_step_favours_the_winner(tiny_models, tmp_path):
    models = make_models(tiny_models)
    method = SmPO(SmPOConfig(beta=2000.0, inverter="reference"))
    method.setup(make_context(models, tmp_path))
    parts = make_batch(4, 2, scores=torch.tensor([0.25, 0.22, 0.15, 0.2]))
    loss, logs = method.loss(batch_with(parts, 3), models)
    assert loss.item() == pytest.approx(LN2, abs=1e-6)
    assert logs["p_mean"] > 0.5
    evals = models.unet_evals
    descend(models, loss)
    after, _ = method.loss(batch_with(parts, 3), models)
    assert after.item() < loss.item()
    # The second call found every inversion cached: only the policy and reference forwards ran.
    assert models.unet_evals - evals == 8
    assert len(list(tmp_path.rglob("*.safetensors"))) == 4


def test_smpo_policy_inversion_uses_two_evaluations_per_inverse_step(tiny_models):
    models = make_models(tiny_models)
    method = SmPO(SmPOConfig(beta=2000.0, inverter="policy", inversion_steps=5))
    method.setup(make_context(models))
    parts = make_batch(2, 1, scores=torch.tensor([0.25, 0.15]))
    batch = batch_with(parts, 5)
    t = torch.randint(0, 1000, (1,), generator=torch.Generator().manual_seed(5)).item()
    loss, _ = method.loss(batch, models)
    below = int((method.taus < t).sum())
    assert models.unet_evals == 2 * (2 * below) + 4  # ReNoise: 2 evals per tau per image; then policy + reference
    assert loss.item() == pytest.approx(LN2, abs=1e-6)


def test_smpo_without_inversion_is_dpo_with_smoothed_label_weights(tiny_models):
    """inverter="none": the same t and noise as DPO's forward noising, beta scaled per pair by 10 (2p - 1)."""
    models = make_models(tiny_models)
    scores = torch.tensor([0.25, 0.15, 0.22, 0.2])
    method = SmPO(SmPOConfig(beta=2000.0, inverter="none", score_lo=0.0, score_hi=1.0))
    method.setup(make_context(models))
    parts = make_batch(4, 2, scores=scores)
    loss, _ = method.loss(batch_with(parts, 11), models)
    assert models.unet_evals == 8  # policy + reference on the 4 images [winners; losers]: no inversion
    # Rebuild DPO's x_t from the same generator draws and apply the smoothed weights by hand.
    generator = batch_with(parts, 11).generator
    t = torch.randint(0, 1000, (2,), generator=generator).repeat(2)
    noise = torch.randn(parts[0][:2].shape, generator=generator).repeat(2, 1, 1, 1)
    x_t = models.process.add_noise(parts[0], noise, t)
    cond = parts[1].repeat(2)
    (mw, ml), (rw, rl) = (
        per_sample_error(net(x_t, t, cond), noise).chunk(2) for net in (models.policy, models.reference)
    )
    p = torch.sigmoid(scores[:2] - scores[2:])
    expected = -torch.nn.functional.logsigmoid(-0.5 * 2000.0 * 10 * (2 * p - 1) * ((mw - rw) - (ml - rl))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cached_reference_inversion_equals_policy_inversion_while_they_are_the_same_network(tiny_models, tmp_path):
    parts = make_batch(4, 2, scores=torch.tensor([0.25, 0.22, 0.15, 0.2]))
    mse = {}
    for inverter in ("reference", "policy"):
        models = make_models(tiny_models)
        method = SmPO(SmPOConfig(inverter=inverter, inversion_steps=5))
        method.setup(make_context(models, tmp_path))
        mse[inverter] = [method.loss(batch_with(parts, seed), models)[1]["model_mse"] for seed in range(4)]
    # Same t draws, same network: the trajectory lookup must give the very latents the loop computes.
    assert mse["reference"] == pytest.approx(mse["policy"], rel=1e-4)


# -- the ReNoise inversion's levels, as the public code ran them -------------------------------------------
# SmPO's ReNoise inversion runs as the public code ran it (SmPO train.py:1002-1022), on any diffusers version.
#
# JaydenLyh/SmPO pins diffusers 0.20.0 (``requirements.txt:3``) and inverts each sample through
# ``inverse_scheduler.timesteps[timesteps < t]`` (``train.py:1002``), evaluating the network twice per step at
# that timestep (``:1009-1022``).  diffusers 0.20.0's ``DDIMInverseScheduler.set_timesteps`` rolls its grid by
# one and replaces the first entry by the second minus the stride (``scheduling_ddim_inverse.py:292-293``), and
# ``step`` goes from the timestep it is given to that timestep + T // k (``:338``), a source below 0 being the
# image at the initial alpha (``:342``; ``set_alpha_to_one`` false in the real configs: alpha-bar_0).  That
# semantics is restated here, independently of ``methods/smpo.py``, and checked level by level on the SD1.5
# (5 steps) and SDXL (10 steps) stand-in schedulers, which carry the hub configs' values.  Our old convention,
# today's diffusers (the network at the destination, no roll), stays one setting away: ``unrolled``.

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
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
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
    family = {"sd15": SD15, "sdxl": SDXL}[layout]
    models = family.models(
        policy=net, unwrapped=net, reference=lambda: (net, nullcontext()), scheduler=_scheduler(layout)
    )
    config = SmPOConfig(inversion_steps=STEPS[layout], **({"inversion_levels": levels} if levels else {}))
    method = SmPO(config)  # inverter "policy", as the public code (train.py:1009): the trained network, no_grad
    method.setup(
        TrainingContext(
            models=models,
            scheduler=models.scheduler,
            latent_shape=(4, 8, 8),
            grad_accum=1,
            captions=[],
            data_scores=np.array([]),
            encode=None,
            cache=lambda name: Path("/nonexistent") / name,
            device=torch.device("cpu"),
        )
    )
    z = renoise_inversion(
        models.snapshot, x0, Cond(torch.zeros(1, 5, 32)), torch.tensor([t]), method.inverse, method.taus
    )
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
        False,
        False,
        1,
        "leading",
    )


def inverse_grid(steps: int) -> torch.Tensor:
    """The ascending inversion levels: grid points T - 1 - stride * [0..K-1]."""
    return grid_sigma(T - 1 - torch.arange(steps) * (T // steps))


def hand_renoise_inversion(
    net, x0: torch.Tensor, cond: Cond, sigmas: torch.Tensor, levels: str = "rolled"
) -> torch.Tensor:
    """Euler with sigma increasing from 0, two velocities averaged, at the step's source level (rolled) or its
    destination (unrolled); every state."""
    z, below, states = x0, torch.tensor(0.0), []
    for sigma in sigmas:
        level = (below if levels == "rolled" else sigma).expand(len(z))
        v1 = velocity(net, z, level, cond)
        v2 = velocity(net, z + (sigma - below) * v1, level, cond)
        z = z + (sigma - below) * (v1 + v2) / 2
        states.append(z)
        below = sigma
    return torch.stack(states, dim=1)


@pytest.mark.parametrize("levels", ["rolled", "unrolled"])
def test_flow_inversion_is_renoise_averaged_euler_with_sigma_increasing(flow_nets, levels):
    policy, _, scheduler = flow_nets
    models = flow_models(flow_nets)
    batch = flow_batch(2, 2, seed=7, step_seed=17)
    step, taus = flow_inverse_timesteps(SD3.noise_process(scheduler), 5, levels)
    # The network sees each step's source level (rolled: 0 first, as the DDIM form's public grid) or destination.
    seen = torch.cat([torch.zeros(1), inverse_grid(5)[:-1]]) if levels == "rolled" else inverse_grid(5)
    torch.testing.assert_close(taus, seen * T)
    assert (taus.diff() > 0).all()
    states = renoise_trajectory(models.snapshot, batch.latents, batch.cond, step, taus)
    assert models.unet_evals == 2 * 5 * 2  # two velocities per level per image
    expected = hand_renoise_inversion(policy, batch.latents, batch.cond, inverse_grid(5), levels)
    torch.testing.assert_close(states, expected, rtol=1e-4, atol=1e-4)


class ConstantVelocity(torch.nn.Module):
    """The velocity field of one straight path: eps - x0 everywhere, whatever x and t."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("v", eps - x0)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # Models reads the network's dtype from a parameter

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections):
        return SimpleNamespace(sample=self.v.expand_as(hidden_states))


def test_flow_inversion_of_a_straight_path_is_exact(flow_nets):
    generator = torch.Generator().manual_seed(8)
    x0, eps = torch.randn(2, *LATENT, generator=generator), torch.randn(2, *LATENT, generator=generator)
    field = ConstantVelocity(x0, eps)
    models = SD3.models(policy=field, unwrapped=field, reference=lambda: (field, nullcontext()), scheduler=flow_nets[2])
    step, taus = flow_inverse_timesteps(models.process, 5)
    cond = flow_batch(2, 2, seed=8, step_seed=0).cond
    states = renoise_trajectory(models.snapshot, x0, cond, step, taus)
    sigmas = inverse_grid(5).view(1, -1, 1, 1, 1)  # the levels the steps reach
    torch.testing.assert_close(states, (1 - sigmas) * x0[:, None] + sigmas * eps[:, None], rtol=1e-5, atol=1e-5)


def smpo_on_flow(flow_nets, inverter: str, cache_root=None) -> tuple[SmPO, Models]:
    models = flow_models(flow_nets)
    method = SmPO(SmPOConfig(beta=100.0, inverter=inverter, inversion_steps=5, score_lo=0.0, score_hi=1.0))
    method.setup(make_context(models, cache_root, latent_shape=LATENT))
    return method, models


def test_smpo_on_flow_is_the_smoothed_dpo_loss_at_the_inverted_latent_and_its_implied_velocity(flow_nets):
    policy, reference, _ = flow_nets
    scores = torch.tensor([0.8, 0.6, 0.3, 0.5])
    batch = flow_batch(4, 2, seed=9, step_seed=19, scores=scores)
    method, models = smpo_on_flow(flow_nets, "policy")
    loss, _ = method.loss(batch, models)
    # By hand: one sigma per pair; each image inverted by the policy through every step whose source level (the
    # level the network sees) lies below its sigma, so it ends at the first level at or above sigma.
    sigma = logit_normal_sigmas(2, torch.Generator().manual_seed(19)).repeat(2)
    cond = batch.cond.repeat(2)
    levels = inverse_grid(5)
    trajectory = hand_renoise_inversion(policy, batch.latents, cond, levels)
    reached = (torch.cat([torch.zeros(1), levels[:-1]])[None, :] < sigma[:, None]).sum(dim=1)
    z = torch.cat([batch.latents[:, None], trajectory], dim=1)[torch.arange(4), reached]
    s = sigma.view(-1, 1, 1, 1)
    target = (z - (1 - s) * batch.latents) / s - batch.latents  # implied noise minus x0

    def errors(net):
        return per_pixel_mean((velocity(net, z, sigma, cond) - target) ** 2).chunk(2)

    (mw, ml), (rw, rl) = errors(policy), errors(reference)
    p = torch.sigmoid(scores[:2] - scores[2:])
    expected = -F.logsigmoid(-0.5 * 100.0 * 10 * (2 * p - 1) * ((mw - rw) - (ml - rl))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_smpo_on_flow_reference_inversions_are_cached_and_equal_the_inversion_loop(flow_nets, tmp_path):
    """With the policy made equal to the reference, the cached reference trajectories must give the very
    latents the policy's inversion loop computes; the second call inverts nothing."""
    _, reference, scheduler = flow_nets
    scores = torch.tensor([0.8, 0.6, 0.3, 0.5])
    logs = {}
    for inverter in ("reference", "policy"):
        models = SD3.models(
            policy=copy.deepcopy(reference),
            unwrapped=copy.deepcopy(reference),
            reference=lambda: (reference, nullcontext()),
            scheduler=scheduler,
        )
        method = SmPO(SmPOConfig(beta=100.0, inverter=inverter, inversion_steps=5, score_lo=0.0, score_hi=1.0))
        method.setup(make_context(models, tmp_path, latent_shape=LATENT))
        logs[inverter] = [
            method.loss(flow_batch(4, 2, seed=10, step_seed=seed, scores=scores), models)[1]["model_mse"]
            for seed in (20, 21)
        ]
        if inverter == "reference":
            assert len(list(tmp_path.rglob("*.safetensors"))) == 4
            assert models.unet_evals == 4 * 5 * 2 + 2 * (4 + 4)  # inverted once per image, then two losses
    assert logs["reference"] == pytest.approx(logs["policy"], rel=1e-4)
