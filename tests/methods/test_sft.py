"""SFT: its flow form (SD3), the mean velocity error."""

from __future__ import annotations

import pytest
import torch

from methods.sft import SFT, SFTConfig
from support.flow import LATENT, flow_batch, flow_models, logit_normal_sigmas, velocity_errors
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def test_sft_on_flow_is_the_mean_velocity_error(flow_nets):
    policy, _, _ = flow_nets
    batch = flow_batch(3, 3, seed=3, step_seed=13)
    loss, _ = SFT(SFTConfig()).loss(batch, flow_models(flow_nets))
    generator = torch.Generator().manual_seed(13)
    sigma = logit_normal_sigmas(3, generator)
    eps = torch.randn((3, *LATENT), generator=generator)
    assert loss.item() == pytest.approx(
        velocity_errors(policy, batch.latents, eps, sigma, batch.cond).mean().item(), rel=1e-5
    )
