"""SmPO-Diffusion (Lu et al., ICML 2025, arXiv 2506.02698).

DPO with two changes: a smoothed preference p computed from the reward scores of
both images (the loss is scaled by 10 (2p - 1), so equal scores give zero
gradient), and x_t obtained by ReNoise-inverting the real image rather than by
forward noising, with the target noise implied by the inverted latent.

Which network inverts (``inverter``): ``"policy"`` as the public code (SmPO ``train.py:999-1009``:
the trained UNet under no_grad, recomputed every step), or ``"reference"``: the frozen starting network,
whose inversions are deterministic, so each training image (and caption) is
inverted once per run and cached on disk.  With SmPO's lr (~1e-5) and 200 steps
the policy barely moves, so the two agree closely; ``bench/train_step.py``
measures the cost of each.  ``"none"`` forward-noises x_t as DPO does: the smoothed labels
without the inversion (an ablation; the toy preset's choice, because at 8x8 latents the 5-step
inversion gives off-distribution x_t: see the toy entry below and docs/toy-world.md).

Flow form (SD3 and other flow-matching bases; no published recipe, the paper trains SD1.5 and SDXL).
The loss is the same over velocity errors: err = mean over C, H, W of (v_theta(z, t, c) - target)^2
with the target the velocity the inverted latent implies,

    eps_z  = (z - (1 - sigma_t) x0) / sigma_t        the noise taking x0 to z at t = sigma_t T (T = 1000)
    target = eps_z - x0

and the inversion runs the flow ODE backwards, Euler steps with sigma *increasing* from the image
(sigma_0 = 0, z_0 = x0) through an ascending grid sigma_1 < ... < sigma_K (K = ``inversion_steps``),
each with ReNoise's two evaluations at one level s_k, averaged (as the DDIM form averages two eps):

    v1 = v(z_{k-1}, s_k T, c)
    z' = z_{k-1} + (sigma_k - sigma_{k-1}) v1
    v2 = v(z', s_k T, c)
    z_k = z_{k-1} + (sigma_k - sigma_{k-1}) (v1 + v2) / 2

s_k is the step's source level sigma_{k-1} with ``inversion_levels="rolled"`` (the DDIM form's public
convention, diffusers 0.20.0's), its destination sigma_k with "unrolled".

The grid is the scheduler's shifted training grid s(j) (j = 0 .. T-1, s(0) = 1) at j = T - 1 - k'
stride, k' = 0 .. K-1, stride = T // K: the DDIM inverse grid (t = 0, stride, ..., (K-1) stride)
mapped onto the flow grid rank for rank (DDPM t <-> j = T - 1 - t).  As in the DDIM form, each sample
takes every step whose s_k lies below its t, so z ends at the smallest sigma_k at or above sigma_t
(rolled; sigma_K above it) or the largest below (unrolled), and the model then sees that latent at t.
Inverting an exactly linear path (a constant velocity eps - x0) reproduces (1 - sigma_k) x0 + sigma_k eps exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from harness.api import (
    Batch,
    Cond,
    FlowMatching,
    HarnessError,
    Method,
    Models,
    NoiseProcess,
    Pairs,
    PublishedWeights,
    TrainConfig,
    TrainingContext,
    register_method,
)
from harness.api.caching import LRU, atomic_save, load_cached
from methods.dpo import dpo_logits, dpo_loss, forward_noised_pairs, pair_errors, pair_timesteps, preference_logs

# Bounds of PickScore's raw cosine used by the public preprocessing to normalise scores.
PICKSCORE_LO = 0.11543526500463486
PICKSCORE_HI = 0.28201571106910706


def smpo_probability(score_w: torch.Tensor, score_l: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``sigmoid(s'_w - s'_l)`` with ``s' = (s - lo) / (hi - lo)``: how strongly image w is preferred.

    Below 0.5 when the reward prefers the other image: the loss's factor 10 (2p - 1)
    then changes sign, exactly as if the pair were reordered.
    """
    return torch.sigmoid((score_w - score_l) / (hi - lo))


def smpo_scale(p: torch.Tensor) -> torch.Tensor:
    """The factor SmPO multiplies beta by: 10 (2p - 1)."""
    return 10.0 * (2.0 * p - 1.0)


def smpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    p: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``mean(-log sigmoid(-0.5 * beta * 10 (2p - 1) * (Dw - Dl)))`` (Salesforce beta convention)."""
    return dpo_loss(model_err_w, model_err_l, ref_err_w, ref_err_l, beta * smpo_scale(p))


def check_score_range(scores: np.ndarray, lo: float, hi: float, scorer: str) -> None:
    """Every pair score present, and within the normalisation bounds give or take 10% of their width.

    Scores on another scale (PickScore's 100*cos against bounds for its raw cosine) would saturate p and
    silently turn SmPO into DPO with a 10x beta: that is an error, not a training run.
    """
    if np.isnan(scores).any():
        raise HarnessError(
            f"smpo: {int(np.isnan(scores).sum())} pair image(s) have no score; SmPO's labels need "
            f"both images of every pair scored ({scorer})"
        )
    slack = 0.1 * (hi - lo)
    outside = (scores < lo - slack) | (scores > hi + slack)
    if outside.any():
        raise HarnessError(
            f"smpo: {int(outside.sum())} of {len(scores)} pair scores lie outside the bounds [{lo:.4g}, {hi:.4g}] "
            f"(e.g. {scores[outside][0]:.4g}); the bounds must be on the scale of the scores ({scorer}): score the "
            "pairs with that scorer, or set smpo.score_lo / smpo.score_hi to your scores' range"
        )


UNetFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]
# One inverse step, named by the timestep the network is evaluated at: (prediction, that timestep, latent at the
# step's source level) -> latent at its destination level.
InverseStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
InversionLevels = Literal["rolled", "unrolled"]
# (prediction, source level, destination level, latent at the source) -> latent at the destination.
_Move = Callable[[torch.Tensor, float, float, torch.Tensor], torch.Tensor]


def _level_steps(
    sources: torch.Tensor, destinations: torch.Tensor, levels: InversionLevels, move: _Move
) -> tuple[InverseStep, torch.Tensor]:
    """Inverse steps ``sources[j] -> destinations[j]`` (ascending), each named by the timestep the network sees:
    the source level ("rolled") or the destination ("unrolled")."""
    times = sources if levels == "rolled" else destinations
    where = {
        float(time): (float(source), float(destination))
        for time, source, destination in zip(times, sources, destinations)
    }

    def step(prediction: torch.Tensor, tau: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return move(prediction, *where[float(tau)], z)

    return step, times


def inverse_timesteps(
    scheduler_config: Any, steps: int, levels: InversionLevels = "rolled"
) -> tuple[InverseStep, torch.Tensor]:
    """The DDIM inverse steps of a base model's scheduler and the (ascending) timesteps the network sees.

    Step j moves a latent from level ``d_j - T // steps`` to ``d_j`` (d: the scheduler's "leading" grid
    ``stride * [0..steps-1] + steps_offset``, SD1.5 and SDXL's, e.g. 1, 201, ..., 801; a source below 0 is the
    image, at the scheduler's initial alpha), as both diffusers' ``DDIMInverseScheduler.step`` do.  Where the
    network is evaluated is where the versions differ: at the source level in diffusers 0.20.0, whose
    ``set_timesteps`` rolls the grid (-199, 1, 201, 401, 601; ``scheduling_ddim_inverse.py:292-293, 338``), the
    version SmPO pins ("rolled"); at the destination in diffusers >= 0.22 ("unrolled").  Computed here, so
    either holds on any version.
    """
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(scheduler_config)  # the scheduler's values, with its defaults
    config = inverse.config
    stride = config.num_train_timesteps // steps
    if config.timestep_spacing != "leading":
        raise HarnessError(
            f"smpo: the DDIM inversion follows SD1.5 and SDXL's 'leading' timestep_spacing; this "
            f"base model's scheduler has {config.timestep_spacing!r}"
        )
    destinations = torch.arange(steps) * stride + config.steps_offset
    alphas = inverse.alphas_cumprod.to(torch.float64)
    initial = float(inverse.initial_alpha_cumprod)

    def move(eps: torch.Tensor, source: float, destination: float, z: torch.Tensor) -> torch.Tensor:
        a_source = float(alphas[int(source)]) if source >= 0 else initial
        a_destination = float(alphas[int(destination)])
        x0 = (z - (1 - a_source) ** 0.5 * eps) / a_source**0.5
        if config.clip_sample:
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        return a_destination**0.5 * x0 + (1 - a_destination) ** 0.5 * eps

    return _level_steps(destinations - stride, destinations, levels, move)


def flow_inverse_timesteps(
    process: FlowMatching, steps: int, levels: InversionLevels = "rolled"
) -> tuple[InverseStep, torch.Tensor]:
    """The inverse flow ODE's Euler steps and the ascending timesteps the network sees.  The levels ``sigma * T``
    are the training grid's points ``T - 1 - stride * [0, ..., steps-1]`` (stride = grid size // steps); step j
    goes from the level below (the image, sigma 0, for the first) to level j, and the network sees its source
    level ("rolled", as the DDIM form's public convention) or its destination ("unrolled")."""
    stride = len(process.sigmas) // steps
    destinations = process.timesteps_at(len(process.sigmas) - 1 - torch.arange(steps) * stride)
    sources = torch.cat([torch.zeros(1), destinations[:-1]])

    def move(v: torch.Tensor, source: float, destination: float, z: torch.Tensor) -> torch.Tensor:
        return z + (destination - source) / process.num_train_timesteps * v

    return _level_steps(sources, destinations, levels, move)


def inversion_grid(
    scheduler: Any, process: NoiseProcess, steps: int, levels: InversionLevels = "rolled"
) -> tuple[InverseStep, torch.Tensor]:
    """The inverse steps and ascending network timesteps of the base model's family: flow ODE or DDIM."""
    if process.kind == "flow":
        return flow_inverse_timesteps(process, steps, levels)
    return inverse_timesteps(scheduler.config, steps, levels)


def renoise_step(unet: UNetFn, z: torch.Tensor, tau: torch.Tensor, cond: Cond, inverse: InverseStep) -> torch.Tensor:
    """One ReNoise step, the network at timestep tau both times: ``e1 = unet(z, tau)``, ``z1 = step(e1, z)``,
    ``e2 = unet(z1, tau)``, ``z <- step((e1 + e2) / 2, z)`` (conditional branch only, no CFG; SmPO
    ``train.py:1009-1022``)."""
    tau_batch = tau.expand(len(z)).to(z.device)
    e1 = unet(z, tau_batch, cond)
    z1 = inverse(e1, tau, z)
    e2 = unet(z1, tau_batch, cond)
    return inverse((e1 + e2) / 2, tau, z)


@torch.no_grad()
def renoise_inversion(
    unet: UNetFn, x0: torch.Tensor, cond: Cond, t: torch.Tensor, inverse: InverseStep, taus: torch.Tensor
) -> torch.Tensor:
    """ReNoise inversion of ``x0`` through every inverse step whose network timestep lies below the sample's ``t``
    (SmPO ``train.py:1002``, ``timesteps < t``; the model then sees this latent at t).  With the rolled grid
    the latent ends at the smallest level at or above t (the top level for larger t); unrolled, at the largest
    level below t (the image itself for t <= the first level)."""
    z = x0.clone()
    for tau in taus:
        active = (t > tau).nonzero().flatten()
        if len(active) == 0:
            break
        z[active] = renoise_step(unet, z[active], tau, cond.index(active), inverse)
    return z


@torch.no_grad()
def renoise_trajectory(
    unet: UNetFn, x0: torch.Tensor, cond: Cond, inverse: InverseStep, taus: torch.Tensor
) -> torch.Tensor:
    """The inverted latent after each inverse timestep: shape (len(x0), len(taus), C, H, W)."""
    states, z = [], x0
    for tau in taus:
        z = renoise_step(unet, z, tau, cond, inverse)
        states.append(z)
    return torch.stack(states, dim=1)


@dataclass
class SmPOConfig(TrainConfig):
    # Public SD1.5 script: beta 2000, lr 1e-8 scaled by the effective batch 1024 (-> 1.024e-5), 200 steps,
    # 100 warmup, 5 inversion steps, 20% empty captions (code default); the run starts from an SFT UNet.
    beta: float = field(
        default=2000.0,
        metadata={
            "help": "DPO's beta (Salesforce convention), scaled per pair by the smoothed label weight 10 * (2p - 1)"
        },
    )
    lr: float = 1e-8
    scale_lr: bool = True
    max_steps: int = 200
    warmup_steps: int = 100
    caption_dropout: float = 0.2
    inversion_steps: int = field(default=5, metadata={"help": "DDIM steps of the ReNoise inversion giving x_t"})
    inverter: Literal["policy", "reference", "none"] = field(
        default="policy",
        metadata={
            "help": 'which network inverts the training image to x_t: "policy" (the trained one, the published '
            'variant), "reference" (the frozen one, cached on disk), "none" (x_t by forward noising: the '
            "smoothed labels without the inversion)"
        },
    )
    inversion_levels: InversionLevels = field(
        default="rolled",
        metadata={
            "help": "where the inversion's steps evaluate the network and where x_t ends.  "
            '"rolled": as the public code ran (SmPO train.py:1002-1022 on diffusers 0.20.0, '
            "requirements.txt:3): the network at each step's source level (SD1.5: -199, 1, 201, 401, 601), x_t at the smallest level at or above t "
            '(SD1.5: 201 for t in 2 .. 201, 801 for t above 601).  "unrolled": diffusers >= 0.22\'s '
            "DDIMInverseScheduler: the network at each destination (1, 201, .., 801), x_t at the largest level "
            "below t, one stride less noisy.  Flow bases follow the same rule on their grid"
        },
    )
    pair_scorer: str = field(
        default="pickscore-cosine",
        metadata={
            "help": "the reward scoring both images of each pair when the data has no scores: the public "
            "preprocessing's PickScore raw cosine"
        },
    )
    score_lo: float = field(default=PICKSCORE_LO, metadata={"help": "the fixed lower bound normalising pair_scorer"})
    score_hi: float = field(default=PICKSCORE_HI, metadata={"help": "the fixed upper bound normalising pair_scorer"})

    def validate(self) -> None:
        super().validate()
        if self.inverter not in ("policy", "reference", "none"):
            raise HarnessError(f"inverter must be 'policy', 'reference' or 'none', not {self.inverter!r}")
        if self.inversion_levels not in ("rolled", "unrolled"):
            raise HarnessError(f"inversion_levels must be 'rolled' or 'unrolled', not {self.inversion_levels!r}")
        if self.score_hi <= self.score_lo:
            raise HarnessError(f"score_hi ({self.score_hi}) must be greater than score_lo ({self.score_lo})")


@register_method("smpo")
class SmPO(Method):
    description = "SmPO-Diffusion: smoothed reward-based preference + ReNoise inversion (Lu et al. 2025)"
    Config = SmPOConfig
    published = {
        preset: PublishedWeights(
            location, signal="pickscore", how="released SmPO UNet: pair labels smoothed by PickScore's cosine"
        )
        for preset, location in (("sd15", "JaydenLu666/SmPO-SD1.5"), ("sdxl", "JaydenLu666/SmPO-SDXL"))
    }

    def data_spec(self) -> Pairs:
        return Pairs(scorer=self.config.pair_scorer)

    def unet_evals_per_sample(self) -> float:
        """Policy and reference on both images (4), plus with the policy inverting two evaluations per image for
        each inverse step below the pair's t: in expectation over t uniform on the schedule (SD1.5, SDXL), steps
        j = 0..K-1 at about j / K of it ("unrolled"; "rolled": one stride lower, the first below 0); a flow base's
        logit-normal t take a few percent more (K = 5 rolled: 3.92 steps, not 3.8).  The reference's inversions
        are cached (2K evaluations per distinct image, once, not counted)."""
        config, k = self.config, self.config.inversion_steps
        if config.inverter != "policy":
            return 4.0
        below = [min(1.0, 1 - (j - (config.inversion_levels == "rolled")) / k) for j in range(k)]
        return 4.0 + 4.0 * sum(below)

    def setup(self, context: TrainingContext) -> None:
        config = self.config
        check_score_range(context.data_scores, config.score_lo, config.score_hi, config.pair_scorer)
        self.inverse, self.taus = inversion_grid(
            context.scheduler, context.models.process, config.inversion_steps, config.inversion_levels
        )
        self.cache = LRU()
        # On disk, keyed by the reference weights (the starting ones): another base model or init_unet
        # never reuses these.
        self.cache_dir = (
            context.cache("smpo-inversions") / f"k{config.inversion_steps}-{config.inversion_levels}"
            if config.inverter == "reference"
            else None
        )

    def _reference_trajectories(self, batch: Batch, cond: Cond, models: Models) -> torch.Tensor:
        """Per image and caption, the reference's inversion trajectory (2B, k, C, H, W), computed once.

        In RAM for the run, on disk across runs (each entry is k latents; SD1.5 k=5: 160 KB in fp32).
        """
        captions = batch.captions * 2
        keys = [f"{k}-{hashlib.sha256(c.encode()).hexdigest()[:16]}" for k, c in zip(batch.keys, captions)]
        for key in keys:
            path = self.cache_dir / key[:2] / f"{key}.safetensors"
            cached = None if self.cache.get_item(key) is not None else load_cached(path, "inversion-cache entry")
            if cached is not None:
                self.cache.put(key, cached["z"].to(batch.latents.device))
        for i, key in enumerate(keys):
            if key not in self.cache:
                # One image at a time: the cached trajectory must not depend on what shared its batch.
                index = torch.tensor([i], device=batch.latents.device)
                states = renoise_trajectory(
                    models.reference, batch.means[index], cond.index(index), self.inverse, self.taus
                )[0]
                self.cache.put(key, states)
                atomic_save({"z": states.cpu()}, self.cache_dir / key[:2] / f"{key}.safetensors")
        return torch.stack([self.cache[key] for key in keys])

    def _noisy_latents(
        self, batch: Batch, t: torch.Tensor, cond: Cond, models: Models
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input x_t and its target: the inverted latent and the target its implied noise gives, or
        (inverter "none") DPO's forward noising, one noise per pair."""
        if self.config.inverter == "none":
            return forward_noised_pairs(batch, t, models)
        if self.config.inverter == "reference":
            # Cached per image, so inverted from the posterior mean: a drawn latent would make the cache
            # depend on which draw came first.
            x0 = batch.means
            trajectories = self._reference_trajectories(batch, cond, models)
            reached = (self.taus.to(t.device)[None, :] < t[:, None]).sum(dim=1)  # inverse steps below each t
            z = torch.cat([x0.unsqueeze(1), trajectories], dim=1)[torch.arange(len(t), device=t.device), reached]
        else:
            x0 = batch.latents
            z = renoise_inversion(models.snapshot, x0, cond, t, self.inverse, self.taus)
        # The target implied by the inverted latent: the noise that takes x0 to z at t (epsilon models; the
        # process's target of that noise for flow models).
        return z, models.process.target(x0, models.process.noise_of(z, x0, t))

    def loss(self, batch: Batch, models: Models) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        t = pair_timesteps(batch, models)
        cond = batch.cond.repeat(2)
        z, target = self._noisy_latents(batch, t, cond, models)
        model_err, ref_err = pair_errors(models, z, t, cond, target)
        scores_w, scores_l = batch.scores.to(t.device).chunk(2)
        p = smpo_probability(scores_w, scores_l, config.score_lo, config.score_hi)
        loss = smpo_loss(*model_err, *ref_err, p, config.beta)
        logs = preference_logs(dpo_logits(*model_err, *ref_err, config.beta * smpo_scale(p)), model_err, ref_err)
        return loss, {**logs, "p_mean": p.mean().item()}
