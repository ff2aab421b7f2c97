"""Diffusion-KTO (Li, Kallidromitis, Gokul, Kato, Kozuka, arXiv 2404.04465, NeurIPS 2024).

Alignment from single images labelled desirable or undesirable, no pairs: each image's implicit
reward (how much better the policy denoises it than the frozen reference) is measured against a
reference point, and a Kahneman-Tversky utility of that gap is maximised, upwards for desirable
images and downwards for undesirable ones.  Each image has its own timestep and its own noise.

    g_i  = err(ref, x_t^i, eps_i) - err(policy, x_t^i, eps_i)     implicit reward / beta (> 0: the policy
                                                                  denoises image i better than the reference)
    z_0  = max(0, mean_i g_i), no gradient                        reference point: a batch estimate of
                                                                  KL(policy || reference), over every
                                                                  image of the optimizer step
    s_i  = +1 if image i is desirable, -1 if undesirable
    loss = mean_i lambda_{y_i} * (1 - sigmoid(s_i * beta * (g_i - z_0)))
                                                                  lambda_D for desirable, lambda_U for
                                                                  undesirable images

``err`` is the per-sample error (mean over C, H, W of the squared difference to the noise).  The
paper's reward ``beta * log(pi_theta / pi_ref)`` becomes, through Diffusion-DPO's ELBO bound,
``-beta * T * w(t) * (err(policy) - err(ref))``; as the public code (train_kto_sd_v1.5.py:1453-1473),
``T * w(t)`` is folded into beta, which multiplies ``g`` directly (Diffusion-DPO's Salesforce convention,
``-0.5 * beta`` on a difference of two images, puts a factor 0.5 where this has none).  When the policy is the reference,
``g = 0``, ``z_0 = 0`` and the loss is ``0.5 * lambda`` for every image.

Flow form (SD3 and other flow-matching bases, ``models.process``): ``err`` is the velocity error, the
mean over C, H, W of (v_theta(x_t, sigma T, c) - (eps_i - x0))^2 at x_t = (1 - sigma_i) x0 + sigma_i eps_i
(T = 1000), with sigma_i from SD3's training density (u ~ logit-normal(0, 1) picking a point of the
scheduler's shifted grid, shift 3), one per image.  Everything else carries over unchanged: g, z_0,
the utility and both reference-point estimators.  beta multiplies a difference of velocity MSEs here;
no published flow recipe sets it: the sd35 entry keeps SD1.5's 1000, the toy-flow entry sets 250 (DPO's on
SD3.5, beta 100 with its factor 0.5, is 50 in this convention).

``reference_point="mismatched"`` is the public code's other estimator (its ``--bce_offset original``,
the original KTO's): ``z_0 = mean_i g'_i`` with ``g'_i`` measured on the same x_t against the caption
of the previous image in the batch (captions rolled by one), not clamped, as that code computes it; it
costs two more UNet evaluations per image.

Published data and weights.  Pick-a-Pic v2's train split made into per-image labels (the authors'
``train_processed_v3.csv``, hub dataset ``jacklishufan/pick-a-pick-kto-processed``): each distinct image
is, by its split's name, ``exclusive_win`` (preferred in every pair it is in), ``exclusive_lose`` (in none) or
``intersections`` (in some); the published run counts an image preferred at least once as desirable
(``--policy gt_label_wi_l``, train_kto_sd_v1.5.py:1048-1051), and its sampler draws desirable images 80% of
the time, with replacement (``--positive_ratio 0.8``, train_kto_sd_v1.5.py:737-738 and its
``WeightedRandomSampler``, :1186-1189).  The trained SD1.5 UNet: ``jacklishufan/diffusion-kto`` (subfolder
``unet``).  The harness does the same on a pairs source (``per_image_labels``: an image is its path, or its
Pick-a-Pic uid) and on a ``labelled.jsonl`` (``desirable_share``), the draws a function of the seed and the
position, so a resumed run reads what an uninterrupted one reads.  ``per_image_labels=False,
desirable_share=None`` is the earlier reading: each pair's winner (1) and loser (0), drawn uniformly (about
half desirable).

The reference point of the published run is the clamped mean over one step's 8 images (4 GPUs x 2, no
accumulation; ``accelerator.reduce``, train_kto_sd_v1.5.py:1470-1471).  ``reference_point_over="step"``
keeps it the mean over the step's images on any number of GPUs: with accumulation the step's micro-batches
are evaluated first without gradient (2 more network evaluations per image).  ``"micro_batch"`` averages
each forward/backward's images (over all processes): on one GPU with accumulation 4, a mean of 2, noisier
and, through the clamp, biased upward.  The launcher's 8-bit AdamW is a full-precision AdamW here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

from harness.api import (
    Batch,
    Cond,
    HarnessError,
    LabelledImages,
    Method,
    Models,
    PublishedWeights,
    TrainConfig,
    TrainingContext,
    per_sample_error,
    register_method,
)


def kto_implicit_rewards(model_err: torch.Tensor, ref_err: torch.Tensor) -> torch.Tensor:
    """Per-image ``g = err(ref) - err(policy)``: positive where the policy denoises better than the reference."""
    return ref_err - model_err


def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over every training process (itself alone when not distributed), as the public code
    reduces its reference point over the GPUs (train_kto_sd_v1.5.py:1469-1471)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def kto_batch_reference_point(rewards: torch.Tensor) -> torch.Tensor:
    """``z_0 = max(0, mean g)`` over the batch (and the processes), with no gradient."""
    return mean_over_processes(rewards.detach().mean()).clamp(min=0)


def kto_mismatched_reference_point(mismatched_rewards: torch.Tensor) -> torch.Tensor:
    """``z_0 = mean g'`` over images paired with another image's caption, with no gradient, not clamped
    (the public code's ``original`` estimator)."""
    return mean_over_processes(mismatched_rewards.detach().mean())


def kto_signs(labels: torch.Tensor) -> torch.Tensor:
    """+1 for desirable (label 1), -1 for undesirable (label 0)."""
    return 2.0 * labels - 1.0


def kto_utility_arguments(
    rewards: torch.Tensor, reference_point: torch.Tensor, labels: torch.Tensor, beta: float
) -> torch.Tensor:
    """``s * beta * (g - z_0)`` per image: positive when the image is on its label's side of the reference point."""
    return kto_signs(labels) * beta * (rewards - reference_point)


def kto_loss(
    rewards: torch.Tensor,
    reference_point: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    lambda_desirable: float,
    lambda_undesirable: float,
) -> torch.Tensor:
    """``mean(lambda_y * (1 - sigmoid(s * beta * (g - z_0))))``; ``labels`` 1.0 desirable, 0.0 undesirable."""
    weights = torch.where(labels == 1, lambda_desirable, lambda_undesirable)
    utility = torch.sigmoid(kto_utility_arguments(rewards, reference_point, labels, beta))
    return (weights * (1.0 - utility)).mean()


def captions_of_the_previous_image(cond: Cond) -> Cond:
    """Image i's conditioning with the caption of image i - 1 (the first takes the last's): mismatched pairs.
    SDXL's time ids describe the image itself and stay with it."""
    order = torch.roll(torch.arange(len(cond)), 1)
    added = None if cond.added is None else {k: v if k == "time_ids" else v[order] for k, v in cond.added.items()}
    return Cond(cond.hidden[order], added)


@dataclass
class KTOConfig(TrainConfig):
    # Public launcher (jacklishufan/diffusion-kto exps/example.sh): lr 1e-7, not scaled, constant with warmup;
    # AdamW (the launcher's 8-bit AdamW, here in full precision), weight decay 1e-2, clip 1.0.  Steps and warmup
    # as the paper's appendix (10000 and 1000; the launcher says 20000 and 200, and the authors answered in
    # the repository's issue #3 that the paper's values, 2 images per GPU on 4 GPUs without accumulation,
    # reproduce the paper).
    lr: float = 1e-7
    lr_scheduler: str = "constant_with_warmup"
    max_steps: int = 10000
    warmup_steps: int = 1000
    batch_size: int = 2
    caption_dropout: float = 0.2  # the script's --proportion_empty_prompts default
    vae_fp32: bool = True  # train_kto_sd_v1.5.py:859
    # --beta_dpo, the script's default (the launcher does not set it); --lambda_d_kto / --lambda_u_kto defaults.
    beta: float = field(default=1000.0, metadata={"help": "the utility's scale on the policy-reference error gap"})
    lambda_desirable: float = field(default=1.0, metadata={"help": "weight of the desirable images' utility"})
    lambda_undesirable: float = field(default=1.0, metadata={"help": "weight of the undesirable images' utility"})
    reference_point: Literal["batch", "mismatched"] = field(
        default="batch",
        metadata={
            "help": 'the reference point z_0: "batch", the published run\'s estimator (--bce_offset none); '
            '"mismatched", the script\'s other one'
        },
    )
    reference_point_over: Literal["step", "micro_batch"] = field(
        default="step",
        metadata={
            "help": 'over which images the "batch" reference point is the mean.  "step": every image of the '
            "optimizer step, on every process (the published 8: 4 GPUs x 2, no accumulation, "
            "train_kto_sd_v1.5.py:1470-1471); with accumulation a no-grad pass over the step's micro-batches "
            'first (2 more evaluations per image).  "micro_batch": each forward/backward\'s own images (all '
            "processes'), cheaper and noisier"
        },
    )
    per_image_labels: bool = field(
        default=True,
        metadata={
            "help": "pairs data: True, each distinct image once, desirable if preferred in any of its pairs (the "
            "published --policy gt_label_wi_l, train_kto_sd_v1.5.py:1048-1051); False, each pair's winner (1) "
            "and loser (0)"
        },
    )
    desirable_share: float | None = field(
        default=0.8,
        metadata={
            "help": "share of draws that are desirable images, drawn with replacement (--positive_ratio 0.8 and its "
            "WeightedRandomSampler, train_kto_sd_v1.5.py:737-738, 1186-1189); None: each image once per epoch"
        },
    )

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise HarnessError(f"beta must be > 0, not {self.beta}")
        if self.lambda_desirable < 0 or self.lambda_undesirable < 0:
            raise HarnessError("lambda_desirable and lambda_undesirable must be >= 0")
        if self.reference_point not in ("batch", "mismatched"):
            raise HarnessError(f"reference_point must be 'batch' or 'mismatched', not {self.reference_point!r}")
        if self.reference_point_over not in ("step", "micro_batch"):
            raise HarnessError(
                f"reference_point_over must be 'step' or 'micro_batch', not {self.reference_point_over!r}"
            )
        if self.desirable_share is not None and not 0 < self.desirable_share < 1:
            raise HarnessError(f"desirable_share must lie in (0, 1) or be None, not {self.desirable_share}")


@register_method("kto")
class KTO(Method):
    description = "Diffusion-KTO: single labelled images, Kahneman-Tversky utility vs a reference point (Li 2024)"
    Config = KTOConfig
    # Trained on Pick-a-Pic's human labels made per image: no reward shaped its data.
    published = {"sd15": PublishedWeights("jacklishufan/diffusion-kto")}

    step_reference_point: torch.Tensor | None = None  # the step's z_0, when measured ahead of its micro-batches

    def data_spec(self) -> LabelledImages:
        return LabelledImages(per_image=self.config.per_image_labels, desirable_share=self.config.desirable_share)

    def unet_evals_per_sample(self) -> float:
        config = self.config
        accumulates = (config.effective_batch_size or config.batch_size * config.grad_accum) > config.batch_size
        over_step = config.reference_point == "batch" and config.reference_point_over == "step" and accumulates
        # Policy and reference on the image; both again on the mismatched caption, or in the step's no-grad pass.
        return 2.0 + 2.0 * (config.reference_point == "mismatched" or over_step)

    def before_micro_step(self, context: TrainingContext, step: int, micro: int, generator: torch.Generator) -> None:
        # Without accumulation a micro-batch (over all processes) is the step: its own mean is the step's.
        if micro == 0:
            over_step = self.config.reference_point == "batch" and self.config.reference_point_over == "step"
            self.step_reference_point = (
                self.reference_point_of_step(context, step) if over_step and context.grad_accum > 1 else None
            )

    @staticmethod
    def reference_point_of_step(context: TrainingContext, step: int) -> torch.Tensor:
        """``z_0`` over every image of the step: the micro-batches the trainer is about to hand ``loss``, their x_t
        drawn as ``loss`` draws them, the policy's errors without gradient."""
        models = context.models
        rewards = []
        for micro in range(context.grad_accum):
            batch = context.batch(step, micro)
            latents_t, t, target = models.process.noisy(batch.latents, batch.generator)
            model_err = per_sample_error(models.snapshot(latents_t, t, batch.cond), target)
            ref_err = per_sample_error(models.reference(latents_t, t, batch.cond), target)
            rewards.append(kto_implicit_rewards(model_err, ref_err))
        return kto_batch_reference_point(torch.cat(rewards))

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        # Each image its own timestep and noise, as the public script (train_kto_sd_v1.5.py:1321, 1332-1338: no
        # pairs to share them).
        latents_t, t, target = models.process.noisy(batch.latents, batch.generator)
        model_err = per_sample_error(models.policy(latents_t, t, batch.cond), target)
        ref_err = per_sample_error(models.reference(latents_t, t, batch.cond), target)
        rewards = kto_implicit_rewards(model_err, ref_err)
        reference_point = self.step_reference_point
        if reference_point is None:
            reference_point = self.estimate_reference_point(rewards, models, latents_t, t, batch.cond, target)
        labels = batch.labels.to(batch.latents.device)
        loss = kto_loss(
            rewards,
            reference_point,
            labels,
            self.config.beta,
            self.config.lambda_desirable,
            self.config.lambda_undesirable,
        )
        return loss, self.logs(rewards, reference_point, labels, model_err, ref_err)

    def estimate_reference_point(
        self,
        rewards: torch.Tensor,
        models: Models,
        latents_t: torch.Tensor,
        t: torch.Tensor,
        cond: Cond,
        target: torch.Tensor,
    ) -> torch.Tensor:
        if self.config.reference_point == "batch":
            return kto_batch_reference_point(rewards)
        mismatched = captions_of_the_previous_image(cond)
        model_err = per_sample_error(models.snapshot(latents_t, t, mismatched), target)
        ref_err = per_sample_error(models.reference(latents_t, t, mismatched), target)
        return kto_mismatched_reference_point(kto_implicit_rewards(model_err, ref_err))

    def logs(
        self,
        rewards: torch.Tensor,
        reference_point: torch.Tensor,
        labels: torch.Tensor,
        model_err: torch.Tensor,
        ref_err: torch.Tensor,
    ) -> dict[str, float]:
        """The share of images on their label's side of the reference point, the reference point, the mean
        reward signed by label (> 0: desirable images gain on the reference and undesirable ones lose) and
        the two MSEs: defined for any micro-batch, whatever its labels."""
        arguments = kto_utility_arguments(rewards, reference_point, labels, self.config.beta)
        return {
            "implicit_acc": (arguments > 0).float().mean().item(),
            "reference_point": reference_point.item(),
            "signed_reward": (kto_signs(labels) * rewards).mean().item(),
            "model_mse": model_err.mean().item(),
            "ref_mse": ref_err.mean().item(),
        }
