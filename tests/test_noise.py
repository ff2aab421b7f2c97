"""The base model's forward process as losses reach it (harness.api.noise: flow matching, checked against the
flow form written out in tests/support/flow.py) and the per-sample error every loss shares."""

from __future__ import annotations

import pytest
import torch

from harness.api import HarnessError, per_sample_error
from harness.api.noise import FlowMatching
from harness.models.families import SD3, SD15
from support.flow import LATENT, T, grid_sigma
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def test_per_sample_error_is_mean_squared_error_per_sample():
    pred, target = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    expected = torch.stack([((pred[i] - target[i]) ** 2).mean() for i in range(3)])
    assert torch.allclose(per_sample_error(pred, target), expected)


def test_flow_timesteps_follow_the_logit_normal_density_on_the_shifted_grid(flow_nets):
    process = SD3.noise_process(flow_nets[2])
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
    process = SD3.noise_process(flow_nets[2])
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
        SD15.noise_process(DDPMScheduler(prediction_type="v_prediction"))
    assert "'v_prediction'" in str(error.value) and "\n" not in str(error.value)
