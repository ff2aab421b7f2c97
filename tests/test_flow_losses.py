"""Every method's loss on a flow-matching base model (SD3): equal to its flow form written out by hand.

The networks are the tiny SD3.5-Medium-shaped transformer of the ``tiny-sd3`` base model with SD3's
scheduler (FlowMatchEulerDiscreteScheduler, shift 3).  Each hand computation draws its own timesteps
and noise from a generator seeded as the batch's, builds the shifted grid from its formula, calls the
transformer directly and applies the method's formula to the velocity errors; nothing of it goes
through ``models.process``.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harness.api import Batch, Cond, HarnessError, Models
from harness.api.noise import FlowMatching, noise_process
from methods.dpo import DPO, DPOConfig
from methods.dro import DRO, DROConfig
from methods.kto import KTO, KTOConfig
from methods.mapo import MaPO, MaPOConfig
from methods.sft import SFT, SFTConfig
from methods.smpo import SmPO, SmPOConfig, flow_inverse_timesteps, renoise_trajectory
from test_losses import make_context
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

T = 1000
SHIFT = 3.0
LATENT = (16, 8, 8)  # tiny-sd3: 16 channels, 32 px / 4


# -- the flow form written out, independently of harness.api.noise ---------------------------------------------
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
        return net(hidden_states=x, timestep=sigma * T, encoder_hidden_states=cond.hidden,
                   pooled_projections=cond.added["pooled_projections"]).sample


def per_pixel_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def noised(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.view(-1, 1, 1, 1)
    return (1 - sigma) * x0 + sigma * eps


def velocity_errors(net, x0, eps, sigma, cond) -> torch.Tensor:
    """Per sample: mean of (v(x_t, sigma T) - (eps - x0))^2 at x_t = (1 - sigma) x0 + sigma eps."""
    return per_pixel_mean((velocity(net, noised(x0, eps, sigma), sigma, cond) - (eps - x0)) ** 2)


# -- networks and batches -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_nets(harness_cache):
    """The tiny-sd3 transformer as reference, and a policy a small random step away from it (so the
    losses' policy-minus-reference terms are not all zero)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from harness.models import TINY_SHAPES, build_tiny_pipeline

    reference = build_tiny_pipeline(TINY_SHAPES["tiny-sd3"]).transformer.requires_grad_(False)
    policy = copy.deepcopy(reference).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return policy, reference, FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=SHIFT)


def flow_models(flow_nets, policy: torch.nn.Module | None = None) -> Models:
    trained, reference, scheduler = flow_nets
    policy = policy or copy.deepcopy(trained)
    return Models(policy=policy, unwrapped=policy, reference=lambda: (reference, nullcontext()), scheduler=scheduler)


def flow_batch(n_images: int, n_captions: int, seed: int, step_seed: int, scores=None, labels=None) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(n_images, *LATENT, generator=generator)
    cond = Cond(torch.randn(n_captions, 6, 64, generator=generator),
                {"pooled_projections": torch.randn(n_captions, 64, generator=generator)})
    nan = torch.full((n_images,), math.nan)
    return Batch(latents=latents, means=latents, cond=cond, keys=[f"img{seed}-{i}" for i in range(n_images)],
                 scores=nan if scores is None else scores, labels=nan if labels is None else labels,
                 captions=[f"caption {seed}-{i}" for i in range(n_captions)],
                 generator=torch.Generator().manual_seed(step_seed))


def pair_draws(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO-style draws by hand: one sigma per pair, then one noise per pair; both for [winners; losers]."""
    generator = torch.Generator().manual_seed(batch.generator.initial_seed())
    pairs = len(batch.cond)
    sigma = logit_normal_sigmas(pairs, generator).repeat(2)
    eps = torch.randn((pairs, *LATENT), generator=generator).repeat(2, 1, 1, 1)
    return sigma, eps


# -- the process itself ---------------------------------------------------------------------------------------------
def test_flow_timesteps_follow_the_logit_normal_density_on_the_shifted_grid(flow_nets):
    process = noise_process(flow_nets[2])
    assert isinstance(process, FlowMatching)
    sigma = process.sample_timesteps(200_000, torch.Generator().manual_seed(0)) / T
    normal = torch.distributions.Normal(0.0, 1.0)
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        # sigma falls as u rises: sigma's q-quantile is the grid point of u's (1 - q)-quantile.
        u = torch.sigmoid(normal.icdf(torch.tensor(1 - q)))
        expected = grid_sigma((u * T).long())
        assert torch.quantile(sigma, q).item() == pytest.approx(expected.item(), abs=5e-3), q
    assert torch.median(sigma).item() == pytest.approx(0.75, abs=5e-3)  # shift 3 moves u's median 0.5 to 0.75
    assert set((sigma * T).round().long().tolist()) <= set((grid_sigma(torch.arange(T)) * T).round().long().tolist())


def test_flow_noising_target_and_implied_noise_agree(flow_nets):
    process = noise_process(flow_nets[2])
    generator = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, *LATENT, generator=generator), torch.randn(5, *LATENT, generator=generator)
    t = process.sample_timesteps(5, generator)
    sigma = (t / T).view(-1, 1, 1, 1)
    x_t = process.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    torch.testing.assert_close(process.target(x0, eps), eps - x0)
    torch.testing.assert_close(process.noise_of(x_t, x0, t), eps, rtol=1e-4, atol=1e-4)
    # The target is the path's velocity: one Euler step with it from x_t reaches the image and the noise.
    torch.testing.assert_close(x_t - sigma * process.target(x0, eps), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_t + (1 - sigma) * process.target(x0, eps), eps, rtol=1e-5, atol=1e-5)


def test_a_base_model_whose_scheduler_says_v_prediction_is_refused_in_one_line():
    from diffusers import DDPMScheduler

    with pytest.raises(HarnessError) as error:
        noise_process(DDPMScheduler(prediction_type="v_prediction"))
    assert "'v_prediction'" in str(error.value) and "\n" not in str(error.value)


# -- DPO, KTO, MaPO, SFT ------------------------------------------------------------------------------------------
def test_dpo_on_flow_is_the_sigmoid_loss_over_velocity_errors(flow_nets):
    policy, reference, _ = flow_nets
    batch = flow_batch(4, 2, seed=0, step_seed=10)
    loss, _ = DPO(DPOConfig(beta=100.0)).loss(batch, flow_models(flow_nets))
    sigma, eps = pair_draws(batch)
    cond = batch.cond.repeat(2)
    mw, ml = velocity_errors(policy, batch.latents, eps, sigma, cond).chunk(2)
    rw, rl = velocity_errors(reference, batch.latents, eps, sigma, cond).chunk(2)
    expected = -F.logsigmoid(-0.5 * 100.0 * ((mw - rw) - (ml - rl))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(math.log(2), abs=1e-4)  # the policy differs: not the trivial value


def test_kto_on_flow_is_the_utility_of_velocity_error_rewards(flow_nets):
    policy, reference, _ = flow_nets
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    batch = flow_batch(4, 4, seed=1, step_seed=11, labels=labels)
    loss, _ = KTO(KTOConfig(beta=50.0, lambda_desirable=1.0, lambda_undesirable=2.0)).loss(batch, flow_models(flow_nets))
    generator = torch.Generator().manual_seed(11)
    sigma = logit_normal_sigmas(4, generator)  # each image its own sigma, then its own noise
    eps = torch.randn((4, *LATENT), generator=generator)
    g = (velocity_errors(reference, batch.latents, eps, sigma, batch.cond)
         - velocity_errors(policy, batch.latents, eps, sigma, batch.cond))
    z0 = g.mean().clamp(min=0)
    weights, signs = torch.tensor([1.0, 2.0, 1.0, 2.0]), 2 * labels - 1
    expected = (weights * (1 - torch.sigmoid(signs * 50.0 * (g - z0)))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mapo_on_flow_is_the_margin_loss_over_the_policys_velocity_errors(flow_nets):
    policy, _, _ = flow_nets
    batch = flow_batch(4, 2, seed=2, step_seed=12)
    loss, _ = MaPO(MaPOConfig(beta=0.1, snr_value=0.5)).loss(batch, flow_models(flow_nets))
    sigma, eps = pair_draws(batch)
    err_w, err_l = velocity_errors(policy, batch.latents, eps, sigma, batch.cond.repeat(2)).chunk(2)

    def score(e):  # the public form, finite at these errors
        return 0.5 * e / (torch.exp(0.5 * e) - 1)

    expected = err_w.mean() - 0.1 * F.logsigmoid(T * (score(err_w) - score(err_l))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sft_on_flow_is_the_mean_velocity_error(flow_nets):
    policy, _, _ = flow_nets
    batch = flow_batch(3, 3, seed=3, step_seed=13)
    loss, _ = SFT(SFTConfig()).loss(batch, flow_models(flow_nets))
    generator = torch.Generator().manual_seed(13)
    sigma = logit_normal_sigmas(3, generator)
    eps = torch.randn((3, *LATENT), generator=generator)
    assert loss.item() == pytest.approx(velocity_errors(policy, batch.latents, eps, sigma, batch.cond).mean().item(),
                                        rel=1e-5)


# -- DRO ------------------------------------------------------------------------------------------------------------
def hand_flow_trajectories(net, cond: Cond, steps: int, step_seed: int,
                           per_row_sigmas: bool = True) -> tuple[torch.Tensor, ...]:
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
        return self.net(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                        pooled_projections=pooled_projections)


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
    (x, t, hidden), = recorder.calls
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
    assert loss.item() > 0 and loss.item() != pytest.approx(0.001, abs=1e-5)  # the hinge is active, not the margin alone


# -- SmPO -----------------------------------------------------------------------------------------------------------
def inverse_grid(steps: int) -> torch.Tensor:
    """The ascending inversion levels: grid points T - 1 - stride * [0..K-1]."""
    return grid_sigma(T - 1 - torch.arange(steps) * (T // steps))


def hand_renoise_inversion(net, x0: torch.Tensor, cond: Cond, sigmas: torch.Tensor,
                           levels: str = "rolled") -> torch.Tensor:
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
    step, taus = flow_inverse_timesteps(noise_process(scheduler), 5, levels)
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
    models = Models(policy=field, unwrapped=field, reference=lambda: (field, nullcontext()), scheduler=flow_nets[2])
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
        models = Models(policy=copy.deepcopy(reference), unwrapped=copy.deepcopy(reference),
                        reference=lambda: (reference, nullcontext()), scheduler=scheduler)
        method = SmPO(SmPOConfig(beta=100.0, inverter=inverter, inversion_steps=5, score_lo=0.0, score_hi=1.0))
        method.setup(make_context(models, tmp_path, latent_shape=LATENT))
        logs[inverter] = [method.loss(flow_batch(4, 2, seed=10, step_seed=seed, scores=scores), models)[1]["model_mse"]
                          for seed in (20, 21)]
        if inverter == "reference":
            assert len(list(tmp_path.rglob("*.safetensors"))) == 4
            assert models.unet_evals == 4 * 5 * 2 + 2 * (4 + 4)  # inverted once per image, then two losses
    assert logs["reference"] == pytest.approx(logs["policy"], rel=1e-4)
