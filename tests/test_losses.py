"""The methods' losses: pure functions against their formulas, then one real step on a tiny UNet."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.api import Batch, Cond, Models, TrainingContext, per_sample_error
from methods.dpo import DPO, DPOConfig, dpo_loss
from methods.dro import DRO, DROConfig, dro_loss, trajectory_timesteps
from methods.smpo import PICKSCORE_HI, PICKSCORE_LO, SmPO, SmPOConfig, check_score_range, smpo_loss, smpo_probability
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

LN2 = math.log(2.0)


def errors(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=generator) for _ in range(4)]


# -- pure functions ---------------------------------------------------------------------------------
def test_per_sample_error_is_mean_squared_error_per_sample():
    pred, target = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    expected = torch.stack([((pred[i] - target[i]) ** 2).mean() for i in range(3)])
    assert torch.allclose(per_sample_error(pred, target), expected)


def test_dpo_loss_matches_formula_with_salesforce_beta():
    mw, ml, rw, rl = (e * 1e-3 for e in errors())  # errors of realistic size, so 5000 x diff stays O(1)
    beta = 5000.0
    expected = sum(math.log1p(math.exp(0.5 * beta * ((a - c) - (b - d))))  # -log sigmoid(-x) = log(1 + e^x)
                   for a, b, c, d in zip(mw.tolist(), ml.tolist(), rw.tolist(), rl.tolist())) / len(mw)
    assert dpo_loss(mw, ml, rw, rl, beta).item() == pytest.approx(expected, rel=1e-5)


def test_dpo_and_smpo_equal_ln2_when_policy_is_reference():
    mw, ml, _, _ = errors()
    assert dpo_loss(mw, ml, mw, ml, 5000.0).item() == pytest.approx(LN2)
    p = torch.full_like(mw, 0.7)
    assert smpo_loss(mw, ml, mw, ml, p, 2000.0).item() == pytest.approx(LN2)


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


@pytest.mark.parametrize("scores, message", [
    ([21.3, 20.9], "outside the bounds"),  # PickScore's 100*cos against the raw-cosine bounds: p would saturate
    ([0.21, float("nan")], "have no score"),
])
def test_smpo_scores_off_the_bounds_scale_are_an_error(scores, message):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=message):
        check_score_range(torch.tensor(scores).numpy(), PICKSCORE_LO, PICKSCORE_HI, "pickscore-cosine")


# -- one real optimizer step on a tiny UNet ---------------------------------------------------------------
def make_models(tiny_models) -> Models:
    unet, scheduler = tiny_models
    policy = copy.deepcopy(unet)
    reference = copy.deepcopy(unet).requires_grad_(False)
    from contextlib import nullcontext

    return Models(policy=policy, unwrapped=policy, reference=lambda: (reference, nullcontext()), scheduler=scheduler)


def make_context(models: Models, cache_root=None, latent_shape=(4, 8, 8)) -> TrainingContext:
    """A real training context around hand-made networks (no data: no scores to range-check)."""
    return TrainingContext(models=models, scheduler=models.scheduler, latent_shape=latent_shape, grad_accum=1,
                           captions=[], data_scores=np.array([]), encode=None,
                           cache=lambda name: (cache_root or Path("/nonexistent")) / name, device=torch.device("cpu"))


def make_batch(n_images: int, n_captions: int, seed: int = 0, scores: torch.Tensor | None = None) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(n_images, 4, 8, 8, generator=generator)
    cond = Cond(torch.randn(n_captions, 5, 32, generator=generator))
    scores = scores if scores is not None else torch.full((n_images,), math.nan)
    keys = [f"img{i}" for i in range(n_images)]
    return latents, cond, keys, scores


def batch_with(parts: tuple, step_seed: int) -> Batch:
    latents, cond, keys, scores = parts
    return Batch(latents=latents, means=latents, cond=cond, keys=keys, scores=scores,
                 labels=torch.full_like(scores, float("nan")), captions=[f"c{i}" for i in range(len(cond))],
                 generator=torch.Generator().manual_seed(step_seed))


def descend(models: Models, loss: torch.Tensor, size: float = 1e-3) -> None:
    """A small normalised gradient step: a descent step whatever the loss's scale."""
    params = [p for p in models._policy.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= size * g / norm


def test_dpo_starts_at_ln2_and_one_step_favours_the_winner(tiny_models):
    models = make_models(tiny_models)
    method = DPO(DPOConfig(beta=5000.0))
    parts = make_batch(4, 2)
    loss, logs = method.loss(batch_with(parts, 1), models)
    assert loss.item() == pytest.approx(LN2, abs=1e-6)
    descend(models, loss)
    after, logs_after = method.loss(batch_with(parts, 1), models)  # same t and noise
    assert after.item() < loss.item()  # (Dw - Dl) went down: the winner's error fell relative to the loser's
    assert logs_after["implicit_acc"] == 1.0


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
    (mw, ml), (rw, rl) = (per_sample_error(net(x_t, t, cond), noise).chunk(2) for net in (models.policy, models.reference))
    p = torch.sigmoid(scores[:2] - scores[2:])
    expected = -torch.nn.functional.logsigmoid(-0.5 * 2000.0 * 10 * (2 * p - 1) * ((mw - rw) - (ml - rl))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


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
                eps = models._unwrapped(x, tau.expand(1), encoder_hidden_states=parts[1].hidden[row:row + 1]).sample
            torch.testing.assert_close(buffer["x"][row, i:i + 1], x, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(buffer["eps"][row, i:i + 1], eps, rtol=1e-4, atol=1e-4)
            x = scheduler.step(eps, tau, x).prev_sample


def dpm_solver_pp_2m(x: torch.Tensor, steps: int, levels: torch.Tensor, network_t: torch.Tensor, eps_of,
                     alphas_cumprod: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
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
        tiny_models, per_row_sigmas):
    """per_row_sigmas False is basiclab/DiffusionDRO's sampler: misc/patch.py:57-58 sets the DPM-Solver++ levels
    from the first trajectory's timesteps, :185-195 swaps each row's timesteps and history in but not the
    levels; the network is told each row's own timestep.  Checked against the solver written by hand."""
    models = make_models(tiny_models)
    parts = make_batch(3, 3, seed=8)
    method = dro_with_buffer(models, DROConfig(sampler_steps=5, buffer_size=8, per_row_sigmas=per_row_sigmas),
                             batch_with(parts, 9))
    buffer, alphas_cumprod = method.buffer, models.process.alphas_cumprod
    assert len({int(t) for t in buffer["t"][:, 0]}) == 3  # three different offsets: the levels differ by row

    def eps_of(row):
        return lambda x, t: models._unwrapped(x, t.view(1), encoder_hidden_states=parts[1].hidden[row:row + 1]).sample

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
    from contextlib import nullcontext

    models = Models(policy=recorder, unwrapped=recorder.unet, reference=lambda: (reference, nullcontext()),
                    scheduler=scheduler)
    latents, cond, keys, scores = make_batch(4, 4, seed=5)
    latents = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 4, 8, 8) * 100.0  # row r's expert: all 100 r
    batch = batch_with((latents.clone(), cond, keys, scores), 6)
    method = dro_with_buffer(models, DROConfig(sampler_steps=3), batch)
    method.refill_due = False
    recorder.calls.clear()
    method.loss(batch_with((latents.clone(), cond, keys, scores), 7), models)
    (x, t, hidden), = recorder.calls
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
