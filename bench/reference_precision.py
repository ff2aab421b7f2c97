"""How far does computing the reference's errors in fp16 / bf16 (``reference_dtype``) move DPO's logit?

The public Salesforce DPO and SmPO scripts run the reference UNet in fp16 outside autocast and take its
per-sample MSE in fp16; DRO does the same in bf16.  Here the policy is the reference in fp32, so the logit
``-0.5 * beta * ((e_w - e_l) - (r_w - r_l))`` is 0 with fp32 reference errors, and what it becomes with
low-precision ones is the shift that precision alone makes.  Pairs share t and noise, as in training; the
latents are standard normal (the scale of SD's scaled VAE latents).
Usage: .venv/bin/python bench/reference_precision.py [--base tiny] [--pairs 512] [--beta 5000]
"""

from __future__ import annotations

import argparse

import torch

from harness.api import per_sample_error
from harness.api.registry import BASE_MODELS
from harness.models.families import family_of
from harness.models.loading import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny", help="a registered base model or a pipeline directory")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--beta", type=float, default=5000.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    location = BASE_MODELS.get(args.base)() if args.base in BASE_MODELS.names() else args.base
    pipe = load_pipeline(location, device="cpu")
    family = family_of(pipe)
    unet = family.denoiser(pipe).float().eval()
    scheduler = family.training_scheduler(pipe.scheduler)
    generator = torch.Generator().manual_seed(0)
    channels, size = unet.config.in_channels, unet.config.sample_size
    x0 = torch.randn(2 * args.pairs, channels, size, size, generator=generator)
    noise = torch.randn(args.pairs, channels, size, size, generator=generator).repeat(2, 1, 1, 1)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (args.pairs,), generator=generator).repeat(2)
    x_t = scheduler.add_noise(x0, noise, t)
    ids = pipe.tokenizer(
        [""], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0].expand(2 * args.pairs, -1, -1)
        errors = {}
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            net = unet.to(dtype)
            pred = torch.cat(
                [
                    net(
                        x_t[i : i + 64].to(dtype), t[i : i + 64], encoder_hidden_states=hidden[i : i + 64].to(dtype)
                    ).sample
                    for i in range(0, len(x_t), 64)
                ]
            )
            errors[name] = per_sample_error(pred, noise)
        unet.float()
    policy_w, policy_l = errors["fp32"].chunk(2)
    print(
        f"{args.base}: {args.pairs} pairs, beta {args.beta:g}; per-sample fp32 MSE: mean {errors['fp32'].mean():.4f}, "
        f"range [{errors['fp32'].min():.4f}, {errors['fp32'].max():.4f}]"
    )
    for name in ("fp16", "bf16"):
        ref_w, ref_l = errors[name].chunk(2)
        shift = (-0.5 * args.beta * ((policy_w - policy_l) - (ref_w - ref_l))).abs()
        print(
            f"  reference in {name}: |logit shift| mean {shift.mean():.3f}, median {shift.median():.3f}, "
            f"95th pct {shift.quantile(0.95):.3f}, max {shift.max():.3f}; "
            f"|MSE change| mean {(errors[name] - errors['fp32']).abs().mean():.2e}"
        )


if __name__ == "__main__":
    main()
