"""What two of the public DRO code's quirks change, measured (docs/methods.md, "The public code, as it runs").

- ``levels``: the sampler's noise levels (``per_row_sigmas``).  An oracle network that knows each row's
  clean latent x0 predicts the exact noise at the timestep it is told, ``(x - sqrt(abar_t) x0) /
  sqrt(1 - abar_t)``.  With each row integrated on its own levels DPM-Solver++ then visits exactly
  ``sqrt(abar_t) x0 + sqrt(1 - abar_t) n``; on row 0's levels (the public sampler) rows 1-3 drift.  For
  batches of 4 trajectories (SD1.5's noise schedule, 20 steps, random offsets but row 1's 49, so
  its 11th state is labelled t = 499), it prints the signal coefficient a of row 1's state labelled 499
  (every state is exactly a x0 + b x_T), and over rows 2-3 how many timesteps row 0's levels move the
  level a state lies at (the timestep whose sqrt(abar) is a).
- ``adamw``: ``adamw_fused`` on bf16 weights.  The tiny world's DRO (random-init tiny UNet, 4 experts),
  bf16 weights, lr 1e-4, no clipping, trained twice from the same start, once per AdamW; prints how far
  the two final UNets are apart relative to how far each moved, and the share of weights that differ.

Usage: ``python bench/dro_public_code.py levels [--batches 64]`` / ``python bench/dro_public_code.py adamw
[--steps 20]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch


class Oracle(torch.nn.Module):
    """Predicts the exact noise of x given its clean latent, which travels as the text conditioning."""

    def __init__(self, alphas_cumprod: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.alphas_cumprod, self.shape = alphas_cumprod, shape
        self.dtype_anchor = torch.nn.Parameter(torch.zeros(1))  # Models reads the network's dtype from it

    def forward(self, x, t, encoder_hidden_states, added_cond_kwargs=None):
        x0 = encoder_hidden_states.view(-1, *self.shape)
        abar = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - abar.sqrt() * x0) / (1 - abar).sqrt())


def levels(batches: int) -> None:
    from contextlib import nullcontext

    from diffusers import DDPMScheduler

    from harness.api import Cond
    from harness.models.families import SD15
    from methods.dro import sample_trajectories

    # SD1.5's scheduler config (stable-diffusion-v1-5 scheduler/scheduler_config.json).
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    abar = scheduler.alphas_cumprod
    shape, steps, stride = (4, 64, 64), 20, 50
    oracle = Oracle(abar, shape)
    models = SD15.models(
        policy=oracle, unwrapped=oracle, reference=lambda: (oracle, nullcontext()), scheduler=scheduler
    )
    generator = torch.Generator().manual_seed(0)
    grid = torch.arange(steps - 1, -1, -1) * stride
    label = int(grid[10]) + 49
    signal = {True: [], False: []}
    level = {True: [], False: []}
    for _ in range(batches):
        offsets = torch.randint(0, stride, (4,), generator=generator)
        offsets[1] = 49
        timesteps = grid[None, :] + offsets[:, None]
        x0 = torch.randn((4, *shape), generator=generator)
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        for per_row in (True, False):
            xs, _ = sample_trajectories(
                models,
                Cond(x0.view(4, 1, -1)),
                shape,
                timesteps,
                torch.Generator().manual_seed(seed),
                per_row_sigmas=per_row,
            )
            # Every state is a x0 + b x_T (the oracle is linear in both): a, exactly, by least squares.
            x_start = torch.randn((4, *shape), generator=torch.Generator().manual_seed(seed))
            basis = torch.stack([x0, x_start], dim=1).flatten(2).double()  # (4, 2, D)
            gram = basis @ basis.transpose(1, 2)
            coefficient = torch.linalg.solve(gram[:, None], (xs.flatten(2).double() @ basis.transpose(1, 2))[..., None])
            coefficient = coefficient[..., 0, 0].float()  # (4, steps): the signal coefficient a
            signal[per_row].append(float(coefficient[1, 10]))
            # The level each later state of rows 2-3 lies at: the timestep whose sqrt(abar) is its signal
            # coefficient (the first state is the initial noise itself, a = 0, whatever its label).
            level[per_row].append(torch.searchsorted(-abar.sqrt(), -coefficient[2:, 1:].clamp(max=1.0).contiguous()))
    for per_row in (True, False):
        values = torch.tensor(signal[per_row])
        print(
            f"per_row_sigmas={per_row}: signal coefficient of row 1's state labelled t={label}: mean "
            f"{values.mean():.4f}, sd {values.std():.4f}, range [{values.min():.4f}, {values.max():.4f}] "
            f"(sqrt(abar_t) {abar[label].sqrt():.4f})"
        )
    moved = (torch.cat(level[False]) - torch.cat(level[True])).float().flatten()
    print(
        f"rows 2-3 (random offsets), every state after the first: row 0's levels move a state's level by "
        f"mean {moved.mean():+.1f}, mean |.| {moved.abs().mean():.1f}, max |.| {moved.abs().max():.0f} timesteps "
        f"({len(moved)} states)"
    )


def adamw(steps: int) -> None:
    from safetensors.torch import load_file

    from harness.testing.tiny_models import save_tiny_pipeline
    from harness.train.trainer import train

    root = Path(tempfile.mkdtemp(prefix="dro-adamw-"))
    sys_path = Path(__file__).resolve().parents[1] / "tests"
    import sys

    sys.path.insert(0, str(sys_path))
    from support.train_fixtures import write_expert_dir

    base = save_tiny_pipeline(root / "tiny-sd")
    data = write_expert_dir(root / "data")
    overrides = {
        "max_steps": steps,
        "batch_size": 2,
        "grad_accum": 2,
        "lr": 1e-4,
        "sampler_steps": 4,
        "buffer_size": 2,
        "ema_decay": None,
        "mixed_precision": "bf16",
        "master_weights": "bf16",
        "max_grad_norm": 1e9,
        "checkpoint_every": 10**6,
    }  # 1e9: the norm logged, never clipped
    start = {
        k: v.bfloat16().float()
        for k, v in load_file(str(base / "unet" / "diffusion_pytorch_model.safetensors")).items()
    }
    final, norms = {}, []
    for fused in (True, False):
        result = train(
            "dro",
            base_model=base,
            data_dir=data,
            output_dir=root / f"fused-{fused}",
            overrides={**overrides, "adamw_fused": fused},
            on_log=lambda step, terms: norms.append(terms["grad_norm"]),
        )
        final[fused] = load_file(str(result.unet_dir / "diffusion_pytorch_model.safetensors"))
    flat = {fused: torch.cat([final[fused][k].float().flatten() for k in start]) for fused in final}
    origin = torch.cat([start[k].flatten() for k in start])
    moved = {fused: (flat[fused] - origin).norm() for fused in flat}
    apart = (flat[True] - flat[False]).norm()
    print(
        f"{steps} steps, {origin.numel()} weights: |per-op - fused| / |fused - start| = {apart / moved[True]:.3f}; "
        f"|per-op - start| / |fused - start| = {moved[False] / moved[True]:.3f}; weights that differ "
        f"{(flat[True] != flat[False]).float().mean():.3%}; weights moved: fused "
        f"{(flat[True] != origin).float().mean():.3%}, per-op {(flat[False] != origin).float().mean():.3%}; "
        f"gradient norm median {sorted(norms)[len(norms) // 2]:.3g}, max {max(norms):.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("levels", "adamw"))
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    levels(args.batches) if args.what == "levels" else adamw(args.steps)


if __name__ == "__main__":
    main()
