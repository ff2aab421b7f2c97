"""Flow-GRPO: the SDE step's log-probability against torch.distributions, the group advantages and the clipped
objective against hand-computed values, the Online spec's reward parsing and training signals."""

from __future__ import annotations

import math

import pytest
import torch

from harness.api import HarnessError, Online, Scorer, register_scorer, reward_weights, sde_step
from harness.data import specs as data_specs
from harness.train.trainer import resolve_config
from methods.grpo import clipped_objective, group_advantages, kl_to_reference

SIGMA_MAX = 0.9
REWARDED: list[str] = []  # the prompts the scorer below was given


@register_scorer("test-rewarded-prompts")
class RewardedPrompts(Scorer):
    """A reward that records the prompts it rates each image against."""

    name, version, scale = "test-rewarded-prompts", "1", "[0, 1]"

    def score(self, images, prompts):
        REWARDED.extend(prompts)
        return [0.5] * len(images)


@pytest.mark.parametrize("sigma, sigma_next", [(0.6, 0.4), (1.0, 0.9), (0.2, 0.0)])
def test_sde_step_log_prob_is_the_gaussian_of_its_mean_and_std(sigma, sigma_next):
    generator = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, generator=generator)
    x_next, log_prob, mean, std_t = sde_step(
        v, x, torch.tensor(sigma), torch.tensor(sigma_next), 0.7, SIGMA_MAX, generator=generator
    )
    # The formula written out by hand (sigma = 1 takes the grid's second level, as flow_grpo does).
    s, dt = (SIGMA_MAX if sigma == 1 else sigma), sigma_next - sigma
    expected_std_t = 0.7 * math.sqrt(sigma / (1 - s))
    expected_mean = (
        x * (1 + expected_std_t**2 / (2 * sigma) * dt) + v * (1 + expected_std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    assert torch.allclose(mean, expected_mean, atol=1e-6)
    assert std_t.flatten().item() == pytest.approx(expected_std_t)
    normal = torch.distributions.Normal(expected_mean, expected_std_t * math.sqrt(-dt))
    assert torch.allclose(log_prob, normal.log_prob(x_next).mean(dim=(1, 2, 3)), atol=1e-5)
    # The draw is that Gaussian's: standardized, its noise has mean ~0 and std ~1.
    z = (x_next - expected_mean) / (expected_std_t * math.sqrt(-dt))
    assert abs(z.mean().item()) < 0.3 and abs(z.std().item() - 1) < 0.3
    # Given x_next, nothing is drawn and the same log-probability comes back.
    again = sde_step(v, x, torch.tensor(sigma), torch.tensor(sigma_next), 0.7, SIGMA_MAX, x_next=x_next)
    assert torch.equal(again[0], x_next) and torch.allclose(again[1], log_prob)


def test_group_advantages_standardize_per_prompt_or_by_the_batch_std():
    rewards, groups = torch.tensor([1.0, 3.0, 2.0, 6.0]), torch.tensor([0, 0, 1, 1])
    # group 0: mean 2, std 1; group 1: mean 4, std 2 (population std, flow_grpo's np.std).
    expected = torch.tensor([-1 / 1.0001, 1 / 1.0001, -2 / 2.0001, 2 / 2.0001])
    assert torch.allclose(group_advantages(rewards, groups, global_std=False), expected)
    batch_std = math.sqrt(3.5)  # mean 3: (4 + 0 + 1 + 9) / 4
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (batch_std + 1e-4)
    assert torch.allclose(group_advantages(rewards, groups, global_std=True), expected)


def test_clipped_objective_takes_the_pessimistic_term_and_clips_advantages():
    log_prob, old = torch.tensor([0.1, -0.1]), torch.zeros(2)
    # ratio e^0.1 = 1.105 with A = 1: max(-1.105, -1.05) = -1.05; ratio e^-0.1 = 0.905 with A = -1: max(0.905, 0.95).
    value = clipped_objective(log_prob, old, torch.tensor([1.0, -1.0]), clip_range=0.05, adv_clip_max=5.0)
    assert value.item() == pytest.approx((-1.05 + 0.95) / 2)
    # Inside the clip range the gradient is -A d ratio; an advantage of 10 counts as 5.
    log_prob = torch.tensor([0.01], requires_grad=True)
    clipped_objective(log_prob, torch.zeros(1), torch.tensor([10.0]), clip_range=0.05, adv_clip_max=5.0).backward()
    assert log_prob.grad.item() == pytest.approx(-5 * math.exp(0.01))


def test_kl_to_reference_is_the_mean_squared_gap_over_twice_the_variance():
    mean, ref = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    assert kl_to_reference(mean, ref, torch.tensor(0.5).view(1, 1, 1, 1)).item() == pytest.approx(0.25 / 0.5)


def test_a_reward_is_a_scorer_or_a_weighted_sum_and_becomes_the_runs_training_signals():
    assert reward_weights("toy-quality") == {"toy-quality": 1.0}
    assert reward_weights("toy-quality:0.3+toy-fidelity:0.7") == {"toy-quality": 0.3, "toy-fidelity": 0.7}
    with pytest.raises(HarnessError, match="not a weight"):
        reward_weights("toy-quality:high")
    spec = Online("toy-quality:0.3+toy-fidelity:0.7", group_size=2, num_steps=2, guidance_scale=1.0, noise_level=0.7)
    signals, how = data_specs.prepare(spec, "src", "src", {}, print)
    assert {"toy-quality", "toy-fidelity"} <= set(signals) and "online reward" in how
    with pytest.raises(HarnessError, match="unknown"):
        resolve_config("grpo", None, {"reward": "no-such-scorer"})
    with pytest.raises(HarnessError, match="group_size"):
        resolve_config("grpo", None, {"reward": "toy-quality", "group_size": 1})


def test_online_dpo_pairs_each_groups_best_and_worst_sample():
    from methods.online_dpo import best_and_worst

    rewards, groups = torch.tensor([0.2, 0.9, 0.5, 0.1, 0.7, 0.3]), torch.tensor([0, 1, 0, 1, 0, 1])
    winners, losers = best_and_worst(rewards, groups)
    assert winners.tolist() == [4, 1] and losers.tolist() == [0, 3]


def flow_grpo_step_log_prob(v, x, x_next, sigma, sigma_next, noise_level, sigma_max):
    """flow_grpo's SDE step's log-probability written out: N(mean, (std_t sqrt(sigma - sigma_next))^2)."""
    s = sigma_max if sigma == 1 else sigma
    std_t = noise_level * math.sqrt(sigma / (1 - s))
    dt = sigma_next - sigma
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return torch.distributions.Normal(mean, std_t * math.sqrt(-dt)).log_prob(x_next).mean(dim=(1, 2, 3))


@pytest.mark.slow
def test_grpo_with_an_sde_window_samples_and_raises_the_advantage_weighted_log_probability(tiny_sd3_dir, tmp_path):
    """On the tiny SD3 pipeline's own rollout with flow_grpo's Fast window (the SDE on 2 of 4 steps, within the
    first 3): the steps outside the window are the ODE's Euler steps and the log-probabilities the window's,
    both against the network called here; the sampler's log-probabilities are the policy's (ratio 1); and a
    small step down the loss's gradient raises sum_i A_i log p_i (first order: the objective's sign)."""
    from harness.api import METHODS
    from harness.train.trainer import Trainer, step_generator, trainable_parameters
    from support.train_fixtures import write_pair_dir

    overrides = {"beta": 0.0, "sample_steps": 4, "sde_window_size": 2, "sde_window_end": 3}
    config = resolve_config("grpo", "tiny", overrides)
    assert config.trained_steps == 2
    method = METHODS.get("grpo")(config)
    trainer = Trainer(
        method,
        base_model=str(tiny_sd3_dir),
        data_dir=write_pair_dir(tmp_path / "data"),
        output_dir=tmp_path / "out",
        seed=0,
        on_log=None,
    )
    trainer._setup()
    batch = trainer.make_batch(0, 0, step_generator(0, 0, 0))
    rollout = batch.rollout
    start = rollout.window_start
    assert start in (0, 1) and rollout.log_probs.shape == (len(rollout.rewards), 2)
    net, sigmas, scale = trainer.models.policy, rollout.sigmas.tolist(), rollout.guidance_scale
    with torch.no_grad():
        for j in range(4):
            x, x_next = rollout.latents[:, j], rollout.latents[:, j + 1]
            t = rollout.timesteps[j].expand(len(x))
            unconditional, conditional = net(x, t, rollout.uncond), net(x, t, rollout.cond)
            v = unconditional + scale * (conditional - unconditional)
            if start <= j < start + 2:
                expected = flow_grpo_step_log_prob(
                    v, x, x_next, sigmas[j], sigmas[j + 1], config.noise_level, sigmas[1]
                )
                assert torch.allclose(rollout.log_probs[:, j - start], expected, atol=1e-4)
            else:
                assert torch.allclose(x_next, x + v * (sigmas[j + 1] - sigmas[j]), atol=1e-5)
    rollout.rewards = torch.randn(len(rollout.rewards), generator=torch.Generator().manual_seed(1))
    loss, _ = method.loss(batch, trainer.models)
    loss.backward()
    steps = range(config.trained_steps)
    with torch.no_grad():
        before = torch.stack([rollout.step(trainer.models.policy, j)[1] for j in steps], dim=1)
        assert torch.allclose(before, rollout.log_probs, atol=1e-5)
        for param in trainable_parameters(trainer.unet).values():
            param -= 1e-3 * param.grad
        after = torch.stack([rollout.step(trainer.models.policy, j)[1] for j in steps], dim=1)
    advantages = group_advantages(rollout.rewards, rollout.groups, config.global_std)
    assert ((after - before).sum(dim=1) * advantages).sum() > 0


def test_an_sde_window_must_fit_the_sampler_steps():
    with pytest.raises(HarnessError, match="must fit the 10 sampler steps"):
        resolve_config("grpo", "tiny", {"sample_steps": 10, "sde_window_size": 3, "sde_window_end": 2})


@pytest.mark.slow
def test_a_dropped_caption_conditions_the_sampling_but_the_reward_rates_the_examples_own(tiny_sd3_dir, tmp_path):
    """Under caption dropout the policy samples from the empty caption, as it trains on it; the reward still rates
    each sample against its example's caption (the empty one is no prompt a reward can judge)."""
    import json

    from harness.api import METHODS
    from harness.train.trainer import Trainer, step_generator
    from support.train_fixtures import write_pair_dir

    overrides = {"caption_dropout": 1.0, "reward": "test-rewarded-prompts", "sample_steps": 2}
    method = METHODS.get("grpo")(resolve_config("grpo", "tiny", overrides))
    data = write_pair_dir(tmp_path / "data")
    trainer = Trainer(
        method, base_model=str(tiny_sd3_dir), data_dir=data, output_dir=tmp_path / "out", seed=0, on_log=None
    )
    trainer._setup()
    REWARDED.clear()
    batch = trainer.make_batch(0, 0, step_generator(0, 0, 0))
    assert batch.captions and set(batch.captions) == {""}  # every caption dropped from the conditioning
    captions = {json.loads(line)["caption"] for line in (data / "pairs.jsonl").read_text().splitlines()}
    assert len(REWARDED) == len(batch.rollout.rewards) and set(REWARDED) <= captions
