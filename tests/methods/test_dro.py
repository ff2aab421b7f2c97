"""DiffusionDRO: its hinge loss against the formula, the sampler and buffer it trains from (checked against
DPM-Solver++ written by hand), one real step on a tiny UNet, and its flow form (SD3)."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch

from harness.api import Batch, Cond, Models
from harness.models.families import SD15
from methods.dro import DRO, DROConfig, dro_loss, trajectory_timesteps
from support.flow import (
    LATENT,
    T,
    flow_batch,
    flow_models,
    grid_sigma,
    noised,
    per_pixel_mean,
    velocity,
    velocity_errors,
)
from support.losses import batch_with, descend, errors, make_batch, make_context, make_models
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def test_dro_loss_matches_hinge_formula():
    me, re_, mp, rp = errors()
    expected = torch.clamp((me - re_) - (mp - rp) + 0.001, min=0).mean()
    assert torch.allclose(dro_loss(me, re_, mp, rp, 0.001), expected)


def test_dro_hinge_has_zero_gradient_once_margin_is_met():
    margin = 0.001
    model_expert = torch.tensor([0.5, 0.5], requires_grad=True)
    model_policy = torch.tensor([0.5, 0.5], requires_grad=True)
    ref_expert, ref_policy = torch.tensor([0.6, 0.5]), torch.tensor([0.5, 0.5])
    # Sample 0: De - Dp = -0.1 <= -margin (met, no gradient); sample 1: 0 > -margin (active).
    dro_loss(model_expert, ref_expert, model_policy, ref_policy, margin).backward()
    assert model_expert.grad[0] == 0 and model_policy.grad[0] == 0
    assert model_expert.grad[1] > 0 and model_policy.grad[1] < 0


def test_trajectory_timesteps_shift_the_public_grid_by_one_offset_per_trajectory():
    """The public code's grid is (arange(steps) * T // steps) reversed, plus one offset in [0, stride) per
    trajectory, added to every timestep of it."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.tensor([950 - 50 * i for i in range(20)])
    times = trajectory_timesteps(64, 20, generator)
    offsets = times - grid
    assert (offsets == offsets[:, :1]).all()  # one offset per trajectory
    assert offsets.min() >= 0 and offsets.max() < 50
    assert len(set(offsets[:, 0].tolist())) > 10  # drawn per trajectory, not shared
    assert torch.equal(trajectory_timesteps(3, 20, generator, perturb=False), grid.expand(3, 20))


class Recorder(torch.nn.Module):
    """The real UNet, with every call's inputs kept: what a loss fed it can then be checked."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, encoder_hidden_states, added_cond_kwargs=None):
        self.calls.append((x.detach().clone(), t.clone(), encoder_hidden_states.detach().clone()))
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)


def dro_with_buffer(models: Models, config: DROConfig, batch: Batch) -> DRO:
    method = DRO(config)
    method.setup(make_context(models))
    method.refill(batch, models)
    return method


def test_dro_buffer_rows_pair_each_expert_with_a_trajectory_from_its_own_conditioning(tiny_models):
    """Each row: the expert's latent, its (dropout-applied) conditioning, and a DPM-Solver++ trajectory the
    policy sampled from that same conditioning on its own perturbed timesteps; rebuilt here, row by row,
    with a fresh diffusers scheduler."""
    from diffusers import DPMSolverMultistepScheduler

    models = make_models(tiny_models)
    parts = make_batch(3, 3, seed=4)
    parts[1].hidden[2] = 0.0  # a dropped caption's conditioning differs from the others': it must travel too
    batch = batch_with(parts, 3)
    method = dro_with_buffer(models, DROConfig(sampler_steps=4, buffer_size=8), batch)
    buffer = method.buffer
    assert torch.equal(buffer["x0"], parts[0]) and torch.equal(buffer["hidden"], parts[1].hidden)
    assert buffer["t"].shape == (3, 4) and buffer["x"].shape == (3, 4, 4, 8, 8)
    assert models.unet_evals == 3 * 4
    for row in range(3):
        scheduler = DPMSolverMultistepScheduler.from_config(models.scheduler.config, algorithm_type="dpmsolver++")
        scheduler.set_timesteps(timesteps=buffer["t"][row].tolist())
        x = buffer["x"][row, :1]
        for i, tau in enumerate(scheduler.timesteps):
            with torch.no_grad():
                eps = models._unwrapped(x, tau.expand(1), encoder_hidden_states=parts[1].hidden[row : row + 1]).sample
            torch.testing.assert_close(buffer["x"][row, i : i + 1], x, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(buffer["eps"][row, i : i + 1], eps, rtol=1e-4, atol=1e-4)
            x = scheduler.step(eps, tau, x).prev_sample


def dpm_solver_pp_2m(
    x: torch.Tensor, steps: int, levels: torch.Tensor, network_t: torch.Tensor, eps_of, alphas_cumprod: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DPM-Solver++(2M) written from its paper (Lu et al. 2022, multistep second order, data prediction): the
    states x_0..x_{K-1} it visits and the eps it was given.  The step integrates between the noise levels of
    ``levels`` while the network is told ``network_t``."""
    alpha, sigma = alphas_cumprod[levels].sqrt().double(), (1 - alphas_cumprod[levels]).sqrt().double()
    lam = torch.log(alpha / sigma)
    xs, epss, previous = [], [], None
    for k in range(steps - 1):  # the final step's result (sigma = 0) is no visited state
        eps = eps_of(x, network_t[k])
        xs.append(x), epss.append(eps)
        data = (x.double() - sigma[k] * eps.double()) / alpha[k]
        h = lam[k + 1] - lam[k]
        if previous is None:  # first order at the first step
            direction = data
        else:
            r = (lam[k] - lam[k - 1]) / h
            direction = (1 + 1 / (2 * r)) * data - previous / (2 * r)
        x = (sigma[k + 1] / sigma[k] * x.double() - alpha[k + 1] * torch.expm1(-h) * direction).float()
        previous = data
    xs.append(x), epss.append(eps_of(x, network_t[steps - 1]))
    return xs, epss


@pytest.mark.parametrize("per_row_sigmas", [True, False])
def test_dro_sampler_integrates_each_row_on_its_own_levels_or_on_row_zeros_as_the_public_sampler(
    tiny_models, per_row_sigmas
):
    """per_row_sigmas False is basiclab/DiffusionDRO's sampler: misc/patch.py:57-58 sets the DPM-Solver++ levels
    from the first trajectory's timesteps, :185-195 swaps each row's timesteps and history in but not the
    levels; the network is told each row's own timestep.  Checked against the solver written by hand."""
    models = make_models(tiny_models)
    parts = make_batch(3, 3, seed=8)
    method = dro_with_buffer(
        models, DROConfig(sampler_steps=5, buffer_size=8, per_row_sigmas=per_row_sigmas), batch_with(parts, 9)
    )
    buffer, alphas_cumprod = method.buffer, models.process.alphas_cumprod
    assert len({int(t) for t in buffer["t"][:, 0]}) == 3  # three different offsets: the levels differ by row

    def eps_of(row):
        return lambda x, t: models._unwrapped(x, t.view(1), encoder_hidden_states=parts[1].hidden[row : row + 1]).sample

    for row in range(3):
        levels = buffer["t"][row if per_row_sigmas else 0]
        with torch.no_grad():
            xs, epss = dpm_solver_pp_2m(buffer["x"][row, :1], 5, levels, buffer["t"][row], eps_of(row), alphas_cumprod)
        torch.testing.assert_close(buffer["x"][row], torch.cat(xs), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(buffer["eps"][row], torch.cat(epss), rtol=1e-4, atol=1e-4)


def test_dro_loss_compares_each_expert_with_its_own_rows_trajectory_under_one_conditioning(tiny_models):
    unet, scheduler = tiny_models
    recorder = Recorder(copy.deepcopy(unet))
    reference = copy.deepcopy(unet).requires_grad_(False)

    models = SD15.models(
        policy=recorder, unwrapped=recorder.unet, reference=lambda: (reference, nullcontext()), scheduler=scheduler
    )
    latents, cond, keys, scores = make_batch(4, 4, seed=5)
    latents = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 4, 8, 8) * 100.0  # row r's expert: all 100 r
    batch = batch_with((latents.clone(), cond, keys, scores), 6)
    method = dro_with_buffer(models, DROConfig(sampler_steps=3), batch)
    method.refill_due = False
    recorder.calls.clear()
    method.loss(batch_with((latents.clone(), cond, keys, scores), 7), models)
    ((x, t, hidden),) = recorder.calls
    n = len(t) // 2
    assert torch.equal(t[:n], t[n:]) and torch.equal(hidden[:n], hidden[n:])  # one t and one caption per sample
    abar = models.process.alphas_cumprod[t[:n]].view(-1, 1, 1, 1)
    for i in range(n):
        row = [r for r in range(4) if torch.equal(method.buffer["hidden"][r], hidden[i])]
        assert len(row) == 1
        r = row[0]
        states = [s for s in range(3) if method.buffer["t"][r, s] == t[i]]
        assert states and torch.equal(x[n + i], method.buffer["x"][r, states[0]])  # the row's own policy state
        noise = (x[i] - abar[i].sqrt() * latents[r]) / (1 - abar[i]).sqrt()  # the row's own expert, noised at t
        assert noise.mean().abs() < 0.5 and 0.5 < noise.std() < 1.5


def test_dro_one_step_favours_the_expert_over_the_policy_sample(tiny_models):
    models = make_models(tiny_models)
    parts = make_batch(3, 3)
    method = dro_with_buffer(models, DROConfig(margin=0.001, sampler_steps=5), batch_with(parts, 7))
    method.refill_due = False
    loss, logs = method.loss(batch_with(parts, 7), models)
    assert loss.item() == pytest.approx(0.001, abs=1e-6)  # De = Dp = 0 at the start: the margin alone
    descend(models, loss)
    after, logs_after = method.loss(batch_with(parts, 7), models)
    assert logs_after["expert_diff"] - logs_after["policy_diff"] < logs["expert_diff"] - logs["policy_diff"]
    assert after.item() < loss.item()


def hand_flow_trajectories(
    net, cond: Cond, steps: int, step_seed: int, per_row_sigmas: bool = True
) -> tuple[torch.Tensor, ...]:
    """The flow sampler by hand: levels stride * [0..K-1] + one offset per row on the shifted grid, noise,
    then x_{k+1} = x_k + (sigma_{k+1} - sigma_k) v_k down to sigma = 0 (not per row: row 0's sigmas in the
    step, each row's own in the network)."""
    generator = torch.Generator().manual_seed(step_seed)
    rows, stride = len(cond), T // steps
    offsets = torch.randint(0, stride, (rows, 1), generator=generator)
    sigmas = grid_sigma(torch.arange(steps)[None, :] * stride + offsets)
    steps_between = sigmas if per_row_sigmas else sigmas[:1].expand(rows, -1)
    x = torch.randn((rows, *LATENT), generator=generator)
    xs, vs = [], []
    for k in range(steps):
        v = velocity(net, x, sigmas[:, k], cond)
        xs.append(x), vs.append(v)
        sigma_next = steps_between[:, k + 1] if k + 1 < steps else torch.zeros(rows)
        x = x + (sigma_next - steps_between[:, k]).view(-1, 1, 1, 1) * v
    return sigmas, torch.stack(xs, dim=1), torch.stack(vs, dim=1)


def dro_on_flow(models: Models, batch: Batch, **settings) -> DRO:
    method = DRO(DROConfig(**settings))
    method.setup(make_context(models, latent_shape=LATENT))
    method.refill(batch, models)
    return method


@pytest.mark.parametrize("per_row_sigmas", [True, False])
def test_dro_on_flow_samples_euler_trajectories_of_the_probability_flow_ode(flow_nets, per_row_sigmas):
    """per_row_sigmas False carries the public DDPM sampler's quirk over (misc/patch.py:57-58, 185-195):
    row 0's levels in every row's step."""
    policy, _, _ = flow_nets
    models = flow_models(flow_nets)
    batch = flow_batch(3, 3, seed=4, step_seed=14)
    method = dro_on_flow(models, batch, sampler_steps=4, buffer_size=8, per_row_sigmas=per_row_sigmas)
    assert models.unet_evals == 3 * 4  # one policy evaluation per visited state, CFG 1
    sigmas, xs, vs = hand_flow_trajectories(policy, batch.cond, 4, step_seed=14, per_row_sigmas=per_row_sigmas)
    assert not torch.equal(sigmas[0], sigmas[1])  # rows on different levels: the setting matters here
    assert (sigmas[:, 0] > grid_sigma(torch.tensor(T // 4))).all()  # each row starts within a stride of sigma 1
    torch.testing.assert_close(method.buffer["t"], sigmas * T)
    torch.testing.assert_close(method.buffer["x"], xs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(method.buffer["eps"], vs, rtol=1e-4, atol=1e-4)


class SD3Recorder(torch.nn.Module):
    """The real transformer, with every call's inputs kept."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections):
        self.calls.append((hidden_states.detach().clone(), timestep.clone(), encoder_hidden_states.detach().clone()))
        return self.net(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
        )


def test_dro_loss_on_flow_is_the_hinge_over_velocity_errors_with_one_caption_and_t_per_sample(flow_nets):
    trained, reference, _ = flow_nets
    recorder = SD3Recorder(copy.deepcopy(trained))
    models = flow_models(flow_nets, policy=recorder)
    method = dro_on_flow(models, flow_batch(4, 4, seed=5, step_seed=15), sampler_steps=3, margin=0.001)
    method.refill_due = False
    recorder.calls.clear()
    evals = models.unet_evals
    batch = flow_batch(4, 4, seed=6, step_seed=16)
    loss, _ = method.loss(batch, models)
    assert models.unet_evals - evals == 2 * 4 + 2 * 4  # policy and reference, each on 4 expert + 4 policy states
    ((x, t, hidden),) = recorder.calls
    assert torch.equal(t[:4], t[4:]) and torch.equal(hidden[:4], hidden[4:])  # one t and one caption per sample
    # By hand: the rows and states drawn, the expert noised at the state's sigma with fresh noise (target
    # eps - x0), the policy state with its stored velocity as target.
    buffer = method.buffer
    generator = torch.Generator().manual_seed(16)
    row = torch.randperm(4, generator=generator)
    state = torch.randint(0, 3, (4,), generator=generator)
    eps = torch.randn((4, *LATENT), generator=generator)
    sigma = buffer["t"][row, state] / T
    cond = Cond(buffer["hidden"][row], {"pooled_projections": buffer["added.pooled_projections"][row]})
    x0, x_p, v_p = buffer["x0"][row], buffer["x"][row, state], buffer["eps"][row, state]
    torch.testing.assert_close(x[:4], noised(x0, eps, sigma))
    torch.testing.assert_close(x[4:], x_p)

    def policy_error(net):
        return per_pixel_mean((velocity(net, x_p, sigma, cond) - v_p) ** 2)

    expert_diff = velocity_errors(trained, x0, eps, sigma, cond) - velocity_errors(reference, x0, eps, sigma, cond)
    policy_diff = policy_error(trained) - policy_error(reference)
    expected = torch.relu(expert_diff - policy_diff + 0.001).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() > 0 and loss.item() != pytest.approx(
        0.001, abs=1e-5
    )  # the hinge is active, not the margin alone
