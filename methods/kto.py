"""Diffusion-KTO (Li, Kallidromitis, Gokul, Kato, Kozuka, arXiv 2404.04465, NeurIPS 2024).

Alignment from single images labelled desirable or undesirable, no pairs: each image's implicit
reward (how much better the policy denoises it than the frozen reference) is measured against a
reference point, and a Kahneman-Tversky utility of that gap is maximised, upwards for desirable
images and downwards for undesirable ones.  Each image has its own timestep and its own noise.

    g_i  = err(ref, x_t^i, eps_i) - err(policy, x_t^i, eps_i)     implicit reward / beta (> 0: the policy
                                                                  denoises image i better than the reference)
    z_0  = max(0, mean_i g_i), no gradient                        reference point: a batch estimate of
                                                                  KL(policy || reference), over every
                                                                  process's images
    s_i  = +1 if image i is desirable, -1 if undesirable
    loss = mean_i lambda_{y_i} * (1 - sigmoid(s_i * beta * (g_i - z_0)))
                                                                  lambda_D for desirable, lambda_U for
                                                                  undesirable images

``err`` is the per-sample error (mean over C, H, W of the squared difference to the noise).  The
paper's reward ``beta * log(pi_theta / pi_ref)`` becomes, through Diffusion-DPO's ELBO bound,
``-beta * T * w(t) * (err(policy) - err(ref))``; as the public code, ``T * w(t)`` is folded into beta,
which multiplies ``g`` directly (Diffusion-DPO's Salesforce convention, ``-0.5 * beta`` on a
difference of two images, puts a factor 0.5 where this has none).  When the policy is the reference,
``g = 0``, ``z_0 = 0`` and the loss is ``0.5 * lambda`` for every image.

``reference_point="mismatched"`` is the public code's other estimator (its ``--bce_offset original``,
the original KTO's): ``z_0 = mean_i g'_i`` with ``g'_i`` measured on the same x_t against the caption
of the next image in the batch (captions rolled by one), not clamped, as that code computes it; it
costs two more UNet evaluations per image.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def kto_implicit_rewards(model_err: torch.Tensor, ref_err: torch.Tensor) -> torch.Tensor:
    """Per-image ``g = err(ref) - err(policy)``: positive where the policy denoises better than the reference."""
    return ref_err - model_err


def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over every training process (itself alone when not distributed), as the public code
    reduces its reference point over the GPUs."""
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


def kto_utility_arguments(rewards: torch.Tensor, reference_point: torch.Tensor, labels: torch.Tensor,
                          beta: float) -> torch.Tensor:
    """``s * beta * (g - z_0)`` per image: positive when the image is on its label's side of the reference point."""
    return kto_signs(labels) * beta * (rewards - reference_point)


def kto_loss(rewards: torch.Tensor, reference_point: torch.Tensor, labels: torch.Tensor, beta: float,
             lambda_desirable: float, lambda_undesirable: float) -> torch.Tensor:
    """``mean(lambda_y * (1 - sigmoid(s * beta * (g - z_0))))``; ``labels`` 1.0 desirable, 0.0 undesirable."""
    weights = torch.where(labels == 1, lambda_desirable, lambda_undesirable)
    utility = torch.sigmoid(kto_utility_arguments(rewards, reference_point, labels, beta))
    return (weights * (1.0 - utility)).mean()
