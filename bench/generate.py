"""Does `harness generate` add anything on top of the diffusers pipeline?

Times, in one process, on the same prompts, model and settings, interleaved repeat by repeat:
  harness    harness.evaluation.sampling.generate (per-image generators and latents, PNG + sha256 +
             journal per image, batch-invariant numerics on CPU)
  pipeline   a plain StableDiffusionPipeline call per batch of the same size, PIL images
             returned and not saved (the baseline: ratio harness/pipeline, target >= 0.95)
  per-image  one pipeline call per image, as the reference inference scripts do
and prints images/s (medians of --repeats) and the ratios.  With --flops it also counts the
UNet's FLOPs per denoising step (torch.utils.flop_counter) and reports the UNet's achieved
TFLOP/s over the `harness` time and, given --peak-tflops, its share of the device's peak.

Models: ``tiny`` (the test model, 32x32), ``small`` (a 3-level UNet, 64x64), ``sd15``
(SD1.5-shaped, random init: for a GPU, 512x512), or a diffusers directory / hub id.
Usage: .venv/bin/python bench/generate.py --model small --prompts 8 --batch-size 4 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness.api.environment import cache_dir
from harness.api.suite import Suite
from harness.evaluation.sampling import generate, optimize_pipeline
from harness.evaluation.suites import get_suite
from harness.models.loading import load_pipeline
from harness.testing.tiny_models import TinyPipelineConfig, save_tiny_pipeline

SMALL = TinyPipelineConfig(image_size=64, block_out_channels=(64, 128, 256), layers_per_block=2, text_hidden_size=64)


def build_model(name: str, device: str, dtype: torch.dtype):
    if name == "tiny":
        return load_pipeline(save_tiny_pipeline(cache_dir() / "tiny-sd"), device=device, dtype=dtype)
    if name == "small":
        return load_pipeline(save_tiny_pipeline(cache_dir() / "bench-small-sd", SMALL), device=device, dtype=dtype)
    if name == "sd15":
        return sd15_shaped_pipeline().to(device=device, dtype=dtype)
    return load_pipeline(name, device=device, dtype=dtype)


def sd15_shaped_pipeline():
    """Stable Diffusion 1.5's architecture (UNet 860M, VAE, CLIP ViT-L text encoder), random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from harness.testing.tiny_models import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        latent_channels=4,
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(cache_dir() / "clip-tokenizer"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_flops_per_step(pipe, batch_size: int, height: int, width: int) -> int:
    """FLOPs of one classifier-free-guidance UNet call (2 x batch rows) at this resolution."""
    from torch.utils.flop_counter import FlopCounterMode

    factor = pipe.vae_scale_factor
    device, dtype = pipe._execution_device, pipe.unet.dtype
    latents = torch.randn(
        2 * batch_size, pipe.unet.config.in_channels, height // factor, width // factor, device=device, dtype=dtype
    )
    text = torch.randn(2 * batch_size, 77, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(latents, torch.tensor(500, device=device), encoder_hidden_states=text)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--prompts", type=int, default=8, help="first N PartiPrompts")
    parser.add_argument("--images-per-prompt", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--resolution", type=int, help="default: the model's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--flops", action="store_true", help="count UNet FLOPs and report achieved TFLOP/s")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = optimize_pipeline(
        build_model(args.model, device, dtype), channels_last=args.channels_last, compile_unet=args.compile
    )
    suite = Suite("bench", "unseen", get_suite("parti").prompts[: args.prompts])
    size = args.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.cfg, height=size, width=size)
    prompts = [p.prompt for p in suite.prompts] * args.images_per_prompt
    n_images = len(prompts)

    def harness_run() -> None:
        with tempfile.TemporaryDirectory() as out:
            generate(
                pipe,
                suite,
                Path(out),
                images_per_prompt=args.images_per_prompt,
                batch_size=args.batch_size,
                seed=0,
                progress=False,
                **settings,
            )

    def pipeline_run() -> None:
        for start in range(0, n_images, args.batch_size):
            pipe(
                prompt=prompts[start : start + args.batch_size],
                generator=torch.Generator().manual_seed(start),
                **settings,
            )

    def per_image_run() -> None:
        for i, prompt in enumerate(prompts):
            pipe(prompt=prompt, generator=torch.Generator().manual_seed(i), **settings)

    variants = {"harness": harness_run, "pipeline": pipeline_run, "per-image": per_image_run}
    for run in variants.values():  # warm-up: allocator, oneDNN primitives, compilation
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)

    rate = {name: n_images / statistics.median(times) for name, times in seconds.items()}
    print(
        f"model {args.model} on {device} ({dtype}, {torch.get_num_threads()} threads), {size}x{size}, "
        f"{args.steps} steps, CFG {args.cfg}, {n_images} images, batch {args.batch_size}, median of {args.repeats}"
    )
    for name, value in rate.items():
        print(f"  {name:10s} {value:8.3f} images/s   (runs: {', '.join(f'{t:.2f}s' for t in seconds[name])})")
    print(f"  harness / pipeline  = {rate['harness'] / rate['pipeline']:.3f}   (target >= 0.95)")
    print(f"  harness / per-image = {rate['harness'] / rate['per-image']:.3f}")
    if args.flops:
        per_step = unet_flops_per_step(pipe, args.batch_size, size, size)
        # Over the whole harness time (text encoder, VAE, PNGs included): a lower bound on the UNet's own rate.
        achieved = per_step / args.batch_size * n_images * args.steps / statistics.median(seconds["harness"]) / 1e12
        line = f"  UNet: {per_step / 1e9:.2f} GFLOP per CFG step at batch {args.batch_size}; {achieved:.4f} TFLOP/s over harness time"
        if args.peak_tflops:
            line += f" = {achieved / args.peak_tflops:.1%} of {args.peak_tflops} TFLOP/s peak"
        print(line)


if __name__ == "__main__":
    main()
