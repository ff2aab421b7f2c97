"""Diffusion-KTO: its loss against the formula in methods/kto.py's docstring, on small hand-computed tensors.  Its flow form (SD3) too."""

from __future__ import annotations

import math
import multiprocessing
import socket

import pytest
import torch

from harness.api import Cond, HarnessError
from harness.data import specs as data_specs
from harness.train.trainer import resolve_config, train
from methods.kto import (
    KTO,
    KTOConfig,
    captions_of_the_previous_image,
    kto_batch_reference_point,
    kto_implicit_rewards,
    kto_loss,
    kto_mismatched_reference_point,
    mean_over_processes,
)
from support.flow import LATENT, flow_batch, flow_models, logit_normal_sigmas, velocity_errors
from support.train_fixtures import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    write_pair_dir,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- pure functions ---------------------------------------------------------------------------------
def test_implicit_reward_is_reference_error_minus_policy_error():
    model_err, ref_err = torch.tensor([0.10, 0.30]), torch.tensor([0.12, 0.25])
    assert torch.allclose(kto_implicit_rewards(model_err, ref_err), torch.tensor([0.02, -0.05]))


def test_batch_reference_point_is_the_clamped_mean_without_gradient():
    rewards = torch.tensor([0.02, -0.01, 0.05], requires_grad=True)
    z0 = kto_batch_reference_point(rewards)
    assert z0.item() == pytest.approx(0.02)
    assert not z0.requires_grad
    # A policy worse than the reference on average: the KL estimate cannot be negative.
    assert kto_batch_reference_point(torch.tensor([-0.02, -0.01, 0.01])).item() == 0.0


def test_mismatched_reference_point_is_the_unclamped_mean_without_gradient():
    rewards = torch.tensor([-0.03, -0.01], requires_grad=True)
    z0 = kto_mismatched_reference_point(rewards)
    assert z0.item() == pytest.approx(-0.02) and not z0.requires_grad


def test_single_process_mean_is_the_value_itself():
    x = torch.tensor(0.25)
    assert mean_over_processes(x) is x


# Each rank's batch mean of g: 0.03 and -0.01.  Clamped per process the reference points would be 0.03 and 0;
# over both processes, as the public code reduces it (diffusion-kto train_kto_sd_v1.5.py:1470-1471), it is
# max(0, 0.01) = 0.01 on each.
def reference_point_on_a_rank(rank: int, port: int, results) -> None:
    """One of two forked processes (forked: they start with torch imported): its rank's reference point, reduced
    over both."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rewards = torch.tensor([[0.02, 0.04], [-0.03, 0.01]])[rank]
    results.put((rank, kto_batch_reference_point(rewards).item()))
    dist.destroy_process_group()


def test_batch_reference_point_is_the_mean_over_every_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    ranks = [context.Process(target=reference_point_on_a_rank, args=(rank, port, results)) for rank in range(2)]
    for rank in ranks:
        rank.start()
    points = dict(results.get(timeout=300) for _ in ranks)
    for rank in ranks:
        rank.join(timeout=60)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    assert points == {0: pytest.approx(0.01), 1: pytest.approx(0.01)}


def test_kto_loss_matches_the_formula_on_hand_computed_values():
    # Two desirable and two undesirable images; beta 1000 (the public code's default), errors of SD's size.
    model_err = torch.tensor([0.100, 0.200, 0.150, 0.300])
    ref_err = torch.tensor([0.101, 0.199, 0.152, 0.2995])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    beta, lam_d, lam_u = 1000.0, 1.0, 2.0
    g = [0.001, -0.001, 0.002, -0.0005]  # ref - policy
    z0 = max(0.0, sum(g) / 4)  # 0.000375
    expected = (
        lam_d * (1 - sigmoid(beta * (g[0] - z0)))
        + lam_d * (1 - sigmoid(beta * (g[1] - z0)))
        + lam_u * (1 - sigmoid(-beta * (g[2] - z0)))
        + lam_u * (1 - sigmoid(-beta * (g[3] - z0)))
    ) / 4
    rewards = kto_implicit_rewards(model_err, ref_err)
    z = kto_batch_reference_point(rewards)
    assert z.item() == pytest.approx(z0, abs=1e-7)
    assert kto_loss(rewards, z, labels, beta, lam_d, lam_u).item() == pytest.approx(expected, rel=1e-4)


def test_kto_loss_is_half_lambda_when_the_policy_is_the_reference():
    err = torch.tensor([0.1, 0.2, 0.3, 0.4])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    rewards = kto_implicit_rewards(err, err)
    loss = kto_loss(rewards, kto_batch_reference_point(rewards), labels, 1000.0, 1.0, 3.0)
    assert loss.item() == pytest.approx((0.5 + 1.5 + 0.5 + 1.5) / 4)


def loss_gradient_on_policy_error(label: float) -> float:
    """d loss / d err(policy) for one image of a batch where the others keep the reference point at 0."""
    model_err = torch.tensor([0.20, 0.30, 0.30], requires_grad=True)
    ref_err = torch.tensor([0.20, 0.29, 0.31])  # the other two images: g = -0.01 and +0.01, so z_0 = 0
    rewards = kto_implicit_rewards(model_err, ref_err)
    labels = torch.tensor([label, 1.0, 0.0])
    kto_loss(rewards, kto_batch_reference_point(rewards), labels, 1000.0, 1.0, 1.0).backward()
    return model_err.grad[0].item()


def test_lowering_the_policy_error_lowers_the_loss_on_a_desirable_image_and_raises_it_on_an_undesirable_one():
    assert loss_gradient_on_policy_error(1.0) > 0  # a lower error on a desirable image: a lower loss
    assert loss_gradient_on_policy_error(0.0) < 0  # a lower error on an undesirable image: a higher loss


def test_the_reference_point_carries_no_gradient():
    """Only the image's own term moves with its error: the gradient is lambda * beta * sigma'(.) / n exactly."""
    model_err = torch.tensor([0.10, 0.20], requires_grad=True)
    ref_err = torch.tensor([0.102, 0.201])  # g = 0.002, 0.001: z_0 = 0.0015 > 0, so it depends on the errors
    rewards = kto_implicit_rewards(model_err, ref_err)
    labels = torch.tensor([1.0, 1.0])
    kto_loss(rewards, kto_batch_reference_point(rewards), labels, 1000.0, 1.0, 1.0).backward()
    for i, g in enumerate([0.002, 0.001]):
        s = sigmoid(1000.0 * (g - 0.0015))
        assert model_err.grad[i].item() == pytest.approx(1000.0 * s * (1 - s) / 2, rel=1e-4)


def test_mismatched_conditioning_gives_each_image_the_previous_captions_text_but_keeps_its_time_ids():
    hidden = torch.arange(3.0).view(3, 1, 1)
    added = {"text_embeds": torch.arange(3.0).view(3, 1), "time_ids": torch.tensor([[10.0], [11.0], [12.0]])}
    rolled = captions_of_the_previous_image(Cond(hidden, added))
    assert rolled.hidden.flatten().tolist() == [2.0, 0.0, 1.0]
    assert rolled.added["text_embeds"].flatten().tolist() == [2.0, 0.0, 1.0]
    assert rolled.added["time_ids"].flatten().tolist() == [10.0, 11.0, 12.0]


@pytest.mark.parametrize("setting", [{"beta": 0.0}, {"lambda_undesirable": -1.0}, {"reference_point": "ema"}])
def test_bad_settings_are_one_line_errors(setting):
    with pytest.raises(HarnessError) as error:
        resolve_config("kto", "tiny", setting)
    assert "\n" not in str(error.value)


# -- through the real trainer ------------------------------------------------------------------------
@pytest.mark.parametrize("reference_point, evals", [("batch", 2.0), ("mismatched", 4.0)])
def test_two_steps_on_the_tiny_preset_train_from_labelled_winners_and_losers(
    reference_point, evals, tiny_model_dir, tmp_path
):
    logged: list[dict] = []
    result = train(
        "kto",
        base_model=tiny_model_dir,
        data_dir=write_pair_dir(tmp_path / "data"),
        preset="tiny",
        output_dir=tmp_path / "out",
        overrides={"reference_point": reference_point},
        on_log=lambda step, terms: logged.append(terms),
    )
    assert result.steps == 2 and len(logged) == 2
    # Policy == reference at the first step: g = 0 and z_0 = 0 for every image, so the loss is 0.5 * lambda (= 1).
    assert logged[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    assert logged[0]["reference_point"] == pytest.approx(0.0, abs=1e-6)
    assert {"implicit_acc", "signed_reward", "model_mse", "ref_mse", "grad_norm"} <= set(logged[0])
    assert logged[1]["model_mse"] != pytest.approx(logged[1]["ref_mse"], abs=1e-6)  # the first step moved the policy
    assert result.unet_evals_per_sample == evals  # policy and reference per image (+ both on mismatched captions)


# -- the published data and reference point (train_kto_sd_v1.5.py) ----------------------------------------
def write_shared_image_pairs(path) -> object:
    """Three pairs over four images: a.png wins against b.png and loses to c.png; d.png loses to c.png."""
    import numpy as np

    from support.train_fixtures import write_image

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in "abcd":
        write_image(path / f"{name}.png", rng)
    rows = [("a", "b", 1.0), ("c", "a", 1.0), ("d", "c", 0.0)]
    (path / "pairs.jsonl").write_text(
        "".join(
            f'{{"caption": "p {i}", "image_0": "{x}.png", "image_1": "{y}.png", "label_0": {label}}}\n'
            for i, (x, y, label) in enumerate(rows)
        ),
        encoding="utf-8",
    )
    return path


def test_per_image_labels_make_an_image_preferred_once_desirable(tmp_path):
    """train_kto_sd_v1.5.py:1048-1051 (--policy gt_label_wi_l): an image in several pairs is one example,
    desirable if it won any of them ("intersections" join the wins).  Per pair, a.png would be two examples
    with opposite labels."""
    from harness.api import LabelledImages

    source = write_shared_image_pairs(tmp_path / "data")
    examples = data_specs.examples(LabelledImages(per_image=True), source)
    labels = {ex.images[0].name: ex.labels[0] for ex in examples}
    assert labels == {"a.png": 1.0, "b.png": 0.0, "c.png": 1.0, "d.png": 0.0}
    assert list(examples.captions()) == [ex.caption for ex in examples] == ["p 0", "p 0", "p 1", "p 2"]
    per_pair = [
        (ex.images[0].name, ex.labels[0]) for ex in data_specs.examples(LabelledImages(per_image=False), source)
    ]
    assert len(per_pair) == 6 and ("a.png", 1.0) in per_pair and ("a.png", 0.0) in per_pair


def test_desirable_share_draws_desirable_images_that_often_with_replacement_deterministically(tmp_path):
    """--positive_ratio 0.8 weights each class by its share over its count (train_kto_sd_v1.5.py:733-738) for a
    WeightedRandomSampler (:1186-1189): draws with replacement, 80% desirable whatever the classes' sizes.
    Here 1 desirable image of 4: a uniform order would draw it 25% of the time."""
    from harness.api import LabelledImages
    from harness.train.trainer import SampleOrder

    source = write_shared_image_pairs(tmp_path / "data")
    (source / "labelled.jsonl").write_text(
        "".join(f'{{"caption": "c", "image": "{x}.png", "label": {int(x == "a")}}}\n' for x in "abcd"), encoding="utf-8"
    )
    examples = data_specs.examples(LabelledImages(desirable_share=0.8), source)
    n = 4000
    order = SampleOrder(len(examples), seed=3, weights=examples.weights)
    drawn = [order(p) for p in range(n)]
    share = sum(examples[i].labels[0] for i in drawn) / n
    assert abs(share - 0.8) < 4 * (0.8 * 0.2 / n) ** 0.5
    assert len(set(drawn[:4])) < 4 or len(set(drawn[4:8])) < 4  # with replacement: repeats within an epoch
    resumed = SampleOrder(len(examples), seed=3, weights=examples.weights)  # a fresh process, read from anywhere
    assert [resumed(p) for p in range(n - 1, -1, -1)] == drawn[::-1]
    assert data_specs.examples(LabelledImages(desirable_share=None), source).weights is None
    with pytest.raises(HarnessError, match="desirable and undesirable"):
        (source / "labelled.jsonl").write_text('{"caption": "c", "image": "a.png", "label": 1}\n', encoding="utf-8")
        data_specs.examples(LabelledImages(desirable_share=0.8), source)


@pytest.mark.parametrize("over", ["step", "micro_batch"])
def test_reference_point_is_the_clamped_mean_over_the_steps_images_with_accumulation(over, tiny_model_dir, tmp_path):
    """train_kto_sd_v1.5.py:1470-1471: z_0 = max(0, mean g) over one step's images on every GPU (4 x 2, no
    accumulation).  With accumulation, "step" keeps that: z_0 is the clamped mean over all 4 micro-batches,
    which the logs give as mean(ref_mse) - mean(model_mse); "micro_batch" clamps each micro-batch's mean."""
    logged: list[dict] = []
    result = train(
        "kto",
        base_model=tiny_model_dir,
        data_dir=write_pair_dir(tmp_path / "data", n_pairs=6),
        preset="tiny",
        output_dir=tmp_path / "out",
        overrides={"batch_size": 1, "grad_accum": 4, "max_steps": 3, "lr": 1e-4, "reference_point_over": over},
        on_log=lambda step, terms: logged.append(terms),
    )
    step_means = [max(0.0, t["ref_mse"] - t["model_mse"]) for t in logged[1:]]
    z0 = [t["reference_point"] for t in logged[1:]]
    if over == "step":
        assert z0 == pytest.approx(step_means, abs=1e-7)
        assert result.unet_evals_per_sample == 4.0  # policy and reference, twice: the look ahead, then the loss
    else:
        assert all(z >= m - 1e-7 for z, m in zip(z0, step_means))  # a mean of clamps: at least the clamped mean
        assert result.unet_evals_per_sample == 2.0


def test_per_image_labels_on_pickapic_identify_images_by_uid_without_decoding_them(tmp_path):
    """The same rule on Pick-a-Pic rows (train_kto_sd_v1.5.py:1048-1051): image "a" wins row 0 and loses row 1,
    so it is one desirable example; ties are not pairs.  A copy without uid columns is a one-line error."""
    import datasets

    from harness.api import LabelledImages

    table = {
        "caption": ["p0", "p1", "tie"],
        "jpg_0": [b"A", b"C", b"A"],
        "jpg_1": [b"B", b"A", b"D"],
        "image_0_uid": ["a", "c", "a"],
        "image_1_uid": ["b", "a", "d"],
        "label_0": [1.0, 1.0, 0.5],
    }
    datasets.Dataset.from_dict(table).save_to_disk(str(tmp_path / "pickapic"))
    examples = data_specs.examples(LabelledImages(per_image=True), tmp_path / "pickapic")
    assert sorted((ex.images[0], ex.labels[0]) for ex in examples) == [(b"A", 1.0), (b"B", 0.0), (b"C", 1.0)]
    del table["image_0_uid"], table["image_1_uid"]
    datasets.Dataset.from_dict(table).save_to_disk(str(tmp_path / "no-uids"))
    with pytest.raises(HarnessError, match="per-image labels need the images' uids"):
        data_specs.examples(LabelledImages(per_image=True), tmp_path / "no-uids")


def test_kto_on_flow_is_the_utility_of_velocity_error_rewards(flow_nets):
    policy, reference, _ = flow_nets
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    batch = flow_batch(4, 4, seed=1, step_seed=11, labels=labels)
    loss, _ = KTO(KTOConfig(beta=50.0, lambda_desirable=1.0, lambda_undesirable=2.0)).loss(
        batch, flow_models(flow_nets)
    )
    generator = torch.Generator().manual_seed(11)
    sigma = logit_normal_sigmas(4, generator)  # each image its own sigma, then its own noise
    eps = torch.randn((4, *LATENT), generator=generator)
    g = velocity_errors(reference, batch.latents, eps, sigma, batch.cond) - velocity_errors(
        policy, batch.latents, eps, sigma, batch.cond
    )
    z0 = g.mean().clamp(min=0)
    weights, signs = torch.tensor([1.0, 2.0, 1.0, 2.0]), 2 * labels - 1
    expected = (weights * (1 - torch.sigmoid(signs * 50.0 * (g - z0)))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
