"""Where SmPO's inverted x_t ends, and what target it implies, under each ``inversion_levels`` convention.

A noise-exact network (it predicts the eps of the straight path x0 -> eps whatever its input, so every DDIM
step is exact) inverts x0 ~ N(0, 1) latents with the SD1.5 (5 steps) and SDXL (10 steps) schedulers (the hub
configs' values); for each t the table gives the level x_t ends at, and the spread (std) of the implied target
eps_hat = (z - sqrt(abar_t) x0) / sqrt(1 - abar_t) and its correlation with x0.  Forward noising gives std 1,
correlation 0.  Usage:  .venv/bin/python bench/smpo_inversion_levels.py
"""

from __future__ import annotations

import torch

from harness.api import Cond
from harness.models.families import SD15, SDXL
from harness.testing.tiny_models import _scheduler
from methods.smpo import inverse_timesteps, renoise_inversion

TS = (50, 150, 250, 500, 801, 802, 950)


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 4, 64, 64, generator=generator), torch.randn(4, 4, 64, 64, generator=generator)
    cond = Cond(torch.zeros(len(x0), 1, 1))
    print("| base | t | levels | x_t's level | std(eps_hat) | corr(eps_hat, x0) |\n|---|---|---|---|---|---|")
    for layout, family, steps in (("sd15", SD15, 5), ("sdxl", SDXL, 10)):
        scheduler = _scheduler(layout)
        process = family.noise_process(scheduler)
        abar = process.alphas_cumprod.double()
        for t in TS:
            for levels in ("rolled", "unrolled"):
                step, taus = inverse_timesteps(scheduler.config, steps, levels)
                tt = torch.full((len(x0),), t)
                z = renoise_inversion(lambda x, tau, c: eps.expand_as(x), x0, cond, tt, step, taus).double()
                # The grid level whose forward-noised latent is nearest z (exact up to the first step's alpha-bar_0).
                level = min(
                    range(1, 1000, 1000 // steps),
                    key=lambda j: (z - abar[j].sqrt() * x0 - (1 - abar[j]).sqrt() * eps).abs().max(),
                )
                implied = process.noise_of(z.float(), x0, tt).double()
                corr = torch.corrcoef(torch.stack([implied.flatten(), x0.double().flatten()]))[0, 1]
                print(f"| {layout} | {t} | {levels} | {level} | {implied.std():.3f} | {corr:+.3f} |")


if __name__ == "__main__":
    main()
