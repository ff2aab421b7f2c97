"""Diffusion-DPO: its loss against the formula, one real step on a tiny UNet, and its flow form (SD3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.dpo import DPO, DPOConfig, dpo_loss
from methods.smpo import smpo_loss
from support.flow import flow_batch, flow_models, pair_draws, velocity_errors
from support.losses import LN2, batch_with, descend, errors, make_batch, make_models
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def test_dpo_loss_matches_formula_with_salesforce_beta():
    mw, ml, rw, rl = (e * 1e-3 for e in errors())  # errors of realistic size, so 5000 x diff stays O(1)
    beta = 5000.0
    expected = sum(
        math.log1p(math.exp(0.5 * beta * ((a - c) - (b - d))))  # -log sigmoid(-x) = log(1 + e^x)
        for a, b, c, d in zip(mw.tolist(), ml.tolist(), rw.tolist(), rl.tolist())
    ) / len(mw)
    assert dpo_loss(mw, ml, rw, rl, beta).item() == pytest.approx(expected, rel=1e-5)


def test_dpo_and_smpo_equal_ln2_when_policy_is_reference():
    mw, ml, _, _ = errors()
    assert dpo_loss(mw, ml, mw, ml, 5000.0).item() == pytest.approx(LN2)
    p = torch.full_like(mw, 0.7)
    assert smpo_loss(mw, ml, mw, ml, p, 2000.0).item() == pytest.approx(LN2)


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
