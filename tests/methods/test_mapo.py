"""MaPO: its loss against the statement in methods/mapo.py, reference-freeness, and the direction it trains; its flow form (SD3)."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from harness.api import Batch, Cond, HarnessError, Models, per_sample_error
from harness.models.families import SD15
from methods.mapo import MaPO, MaPOConfig, mapo_loss, mapo_margin, mapo_score
from support.flow import T, flow_batch, flow_models, pair_draws, velocity_errors
from support.train_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def published_score(error: float, snr_value: float) -> float:
    """The public code's form of s, in float64: w e / (exp(w e) - 1)."""
    x = snr_value * error
    return x / (math.exp(x) - 1)


# -- the pure functions against the statement ----------------------------------------------------------------
def test_score_matches_the_public_form_on_hand_values():
    errors = torch.tensor([0.2, 1.0, 4.0, 30.0])
    # w e = 0.1, 0.5, 2, 15: s = 0.1 / (e^0.1 - 1) = 0.950833, 0.5 / (e^0.5 - 1) = 0.770747, 2 / (e^2 - 1) = 0.313035, ...
    expected = torch.tensor([published_score(e, 0.5) for e in errors.tolist()])
    assert expected[:3].tolist() == pytest.approx([0.950833, 0.770747, 0.313035], abs=1e-6)
    torch.testing.assert_close(mapo_score(errors, 0.5), expected.float())


def test_score_is_bounded_and_its_gradient_finite_where_the_public_form_fails():
    errors = torch.tensor([0.0, 1e-9, 200.0, 1e4], requires_grad=True)
    scores = mapo_score(errors, 0.5)
    assert scores.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-12)
    scores.sum().backward()
    assert torch.isfinite(errors.grad).all()
    assert errors.grad[0].item() == pytest.approx(-0.25, abs=1e-6)  # d s / d e at 0: -w / 2
    # The public form in fp32 overflows here: inf / inf-style NaN gradients.
    naive = torch.tensor([200.0], requires_grad=True)
    (0.5 * naive / (torch.exp(0.5 * naive) - 1)).sum().backward()
    assert not torch.isfinite(naive.grad).all()


def test_loss_matches_the_statement_on_hand_computed_pairs():
    err_w, err_l = torch.tensor([0.30, 0.50]), torch.tensor([0.31, 0.45])
    beta, w, T = 0.1, 0.5, 1000
    margins = [T * (published_score(a, w) - published_score(b, w)) for a, b in zip(err_w.tolist(), err_l.tolist())]
    # Pair 0: the chosen image is slightly likelier (m > 0); pair 1: the rejected one is (m < 0).
    assert margins[0] == pytest.approx(2.3730, abs=1e-3) and margins[1] == pytest.approx(-11.5123, abs=1e-3)
    log_sigmoid = [-math.log1p(math.exp(-m)) for m in margins]
    expected = (0.30 + 0.50) / 2 - beta * sum(log_sigmoid) / 2
    assert mapo_loss(err_w, err_l, beta, w, T).item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(
        mapo_margin(err_w, err_l, w, T), torch.tensor(margins, dtype=torch.float32), rtol=1e-4, atol=1e-3
    )


def test_equal_errors_give_the_chosen_error_plus_beta_ln2():
    err = torch.tensor([0.2, 0.7, 1.3])
    assert mapo_loss(err, err.clone(), 0.1, 0.5, 1000).item() == pytest.approx(err.mean().item() + 0.1 * math.log(2))


def test_gradient_lowers_the_chosen_error_and_raises_the_rejected_one():
    err_w = torch.tensor([0.30, 0.50, 0.9], requires_grad=True)
    err_l = torch.tensor([0.31, 0.45, 0.9], requires_grad=True)
    mapo_loss(err_w, err_l, 0.1, 0.5, 1000).backward()
    assert (err_w.grad > 0).all()  # descent lowers e_w
    assert (err_l.grad < 0).all()  # descent raises e_l
    # Without the margin term only the chosen image is trained: its mean error, nothing on the rejected one.
    err_w.grad, err_l.grad = None, None
    mapo_loss(err_w, err_l, 0.0, 0.5, 1000).backward()
    torch.testing.assert_close(err_w.grad, torch.full((3,), 1 / 3))
    assert err_l.grad is None or torch.count_nonzero(err_l.grad) == 0


# -- the method on a real tiny UNet ---------------------------------------------------------------------------
def recording_models(tiny_models) -> tuple[Models, list[str]]:
    """Models whose reference, if ever asked for, is recorded (and would run a real network)."""
    unet, scheduler = tiny_models
    policy = copy.deepcopy(unet)
    reference = copy.deepcopy(unet).requires_grad_(False)
    calls: list[str] = []

    def get_reference():
        calls.append("reference")
        return reference, nullcontext()

    return SD15.models(policy=policy, unwrapped=policy, reference=get_reference, scheduler=scheduler), calls


def pair_batch(pairs: int, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2 * pairs, 4, 8, 8, generator=generator)
    return Batch(
        latents=latents,
        means=latents,
        cond=Cond(torch.randn(pairs, 5, 32, generator=generator)),
        keys=[f"img{i}" for i in range(2 * pairs)],
        scores=torch.full((2 * pairs,), math.nan),
        labels=torch.full((2 * pairs,), math.nan),
        captions=[f"c{i}" for i in range(pairs)],
        generator=torch.Generator().manual_seed(seed + 100),
    )


def test_reference_network_is_never_called_and_each_image_costs_one_evaluation(tiny_models):
    models, calls = recording_models(tiny_models)
    loss, logs = MaPO(MaPOConfig()).loss(pair_batch(3, seed=0), models)
    loss.backward()
    assert calls == []
    assert models.unet_evals == 6  # the policy on 3 winners and 3 losers, nothing else
    assert set(logs) == {"implicit_acc", "chosen_mse", "rejected_mse", "margin_loss"}


def test_loss_is_the_statement_over_the_policys_errors_at_one_t_and_noise_per_pair(tiny_models):
    from harness.api import randn_like

    models, _ = recording_models(tiny_models)
    batch = pair_batch(2, seed=1)
    loss, _ = MaPO(MaPOConfig(beta=0.1, snr_value=0.5)).loss(batch, models)
    # The same draws by hand: t per pair, then one noise per pair, both repeated for [winners; losers].
    generator = torch.Generator().manual_seed(101)
    t = models.process.sample_timesteps(2, generator).repeat(2)
    noise = randn_like(batch.latents[:2], generator).repeat(2, 1, 1, 1)
    with torch.no_grad():
        pred = models.policy(models.process.add_noise(batch.latents, noise, t), t, batch.cond.repeat(2))
    err_w, err_l = per_sample_error(pred, noise).chunk(2)
    assert loss.item() == pytest.approx(mapo_loss(err_w, err_l, 0.1, 0.5, 1000).item(), rel=1e-5)


def test_one_descent_step_widens_the_margin_for_the_chosen_image(tiny_models):
    models, _ = recording_models(tiny_models)
    method = MaPO(MaPOConfig())
    batch_seed = 2
    loss, logs = method.loss(pair_batch(4, batch_seed), models)
    params = list(models._policy.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = torch.sqrt(sum((g**2).sum() for g in grads if g is not None))
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= 1e-3 * g / norm
    after, logs_after = method.loss(pair_batch(4, batch_seed), models)  # same pairs, t and noise
    assert after.item() < loss.item()
    assert logs_after["margin_loss"] < logs["margin_loss"]  # the chosen image became likelier relative to the other


@pytest.mark.parametrize(
    "field, value, message",
    [("beta", -0.1, "beta must be at least 0"), ("snr_value", 0.0, "snr_value must be positive")],
)
def test_bad_settings_are_a_one_line_error(field, value, message):

    with pytest.raises(HarnessError, match=message):
        MaPOConfig(**{field: value}).validate()


# -- through the real trainer and the presets -----------------------------------------------------------------
def test_two_tiny_preset_steps_through_the_trainer_run_only_the_policy(tiny_model_dir, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from harness.train.trainer import train
    from support.train_fixtures import write_pair_dir

    logged: list[tuple[int, dict]] = []
    result = train(
        "mapo",
        base_model=tiny_model_dir,
        data_dir=write_pair_dir(tmp_path / "data"),
        output_dir=tmp_path / "mapo",
        preset="tiny",
        on_log=lambda step, terms: logged.append((step, terms)),
    )
    assert result.steps == 2 and [step for step, _ in logged] == [1, 2]
    assert result.unet_evals_per_sample == 2.0  # the policy on the winner and the loser; no reference
    first = logged[0][1]
    assert {"loss", "implicit_acc", "chosen_mse", "rejected_mse", "margin_loss"} <= set(first)
    assert first["loss"] == pytest.approx(
        first["chosen_mse"] + 0.1 * first["margin_loss"], rel=1e-4
    )  # tiny keeps beta 0.1
    trained = load_file(str(result.unet_dir / "diffusion_pytorch_model.safetensors"))
    base = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").state_dict()
    assert any(not torch.equal(trained[name], base[name]) for name in trained)


def test_presets_resolve_to_the_published_sdxl_recipe_and_the_toy_settings():
    from harness.train.trainer import resolve_config

    sdxl = resolve_config("mapo", "sdxl")
    assert (sdxl.beta, sdxl.snr_value, sdxl.lr, sdxl.lr_scheduler, sdxl.warmup_steps, sdxl.max_steps) == (
        0.1,
        0.5,
        1e-5,
        "constant",
        0,
        2000,
    )
    assert (sdxl.optimizer, sdxl.effective_batch_size, sdxl.mixed_precision, sdxl.resolution) == (
        "adamw",
        128,
        "fp16",
        1024,
    )
    assert sdxl.gradient_checkpointing and sdxl.vae == "madebyollin/sdxl-vae-fp16-fix" and sdxl.caption_dropout == 0.0
    toy = resolve_config("mapo", "toy")
    assert (toy.beta, toy.lr, toy.batch_size, toy.max_steps, toy.random_flip) == (0.01, 3e-5, 16, 300, False)


def test_pairs_flip_together_and_the_second_image_takes_the_firsts_size(tiny_model_dir, tmp_path):
    """mapo utils.py:205-240: jpg_1 is resized to jpg_0's size (:211), the pair is stacked into one tensor and
    flipped on one coin (:232).  image_1 here is 48 x 32 against image_0's 32 x 32: its latent is that of the
    squashed image, not of its own centre crop.  The Salesforce DPO transform (each image on its own coin, at
    its own size) is joint_pair_transform=False."""
    import json

    import numpy as np
    from PIL import Image

    from harness.api.registry import METHODS
    from harness.data.readers import ImageLoader, content_key, to_pixels
    from harness.models.loading import load_pipeline
    from harness.train.features import FeatureEncoder
    from harness.train.trainer import Trainer, resolve_config, step_generator

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}_0.png")
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(data / f"{i}_1.png")
        rows.append(
            {"caption": f"thing {i}", "image_0": f"{i}_0.png", "image_1": f"{i}_1.png", "label_0": float(i % 2)}
        )
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def batches(method: str, **options) -> tuple[Trainer, list]:
        config = resolve_config(method, "tiny", {"batch_size": 4, "cache_dir": str(tmp_path / "cache"), **options})
        trainer = Trainer(
            METHODS.get(method)(config),
            base_model=str(tiny_model_dir),
            data_dir=data,
            output_dir=tmp_path / "unused",
            seed=0,
            on_log=None,
        )
        trainer._setup()
        return trainer, [trainer.make_batch(step, 0, step_generator(0, step, 0)) for step in range(4)]

    trainer, published = batches("mapo", random_flip=True, latent_sample=False)
    flipped = [[key.endswith("-flip") for key in batch.keys] for batch in published]
    assert all(f[:4] == f[4:] for f in flipped)  # winners then losers: each pair's two images share the coin
    assert any(any(f) for f in flipped) and not all(all(f) for f in flipped)
    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    encoder = FeatureEncoder(
        pipe, device=torch.device("cpu"), resolution=trainer.features.resolution, cache_dir=None, loader=ImageLoader()
    )
    batch = published[0]
    for slot, key in enumerate(batch.keys):
        name = next(p.name for p in data.glob("*.png") if key.startswith(content_key(p)))
        image = Image.open(data / name).convert("RGB")
        if name.endswith("_1.png"):
            image = image.resize((32, 32))
        expected = encoder._encode_image(to_pixels(image, trainer.features.resolution, flip=key.endswith("-flip")))
        torch.testing.assert_close(batch.means[slot], expected.mean, rtol=1e-5, atol=1e-5)
    _, independent = batches("mapo", random_flip=True, latent_sample=False, joint_pair_transform=False)
    assert any(f[:4] != f[4:] for f in [[key.endswith("-flip") for key in b.keys] for b in independent])
    assert not any("sized-like" in key for b in independent for key in b.keys)


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
