"""How fast are the SD1.5- and SDXL-shaped tiny pipelines (``harness.models.loading.TINY_SHAPES``) on one CPU thread?

They stand in for the real models in the offline rehearsal of the sd15 / sdxl recipes, where
their UNet and VAE run hundreds of times.  Prints, per shape, the best of --repeats timings (wall clock and CPU) of
one UNet forward at the native latent size (batch 2, as under classifier-free guidance) and
one VAE encode and decode of one image at the native resolution.
Usage: .venv/bin/python bench/tiny_shapes.py [--shapes sd15,sdxl] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from harness.models.loading import load_pipeline
from harness.testing.tiny_models import TINY_SHAPES, save_tiny_pipeline


def best_of(repeats: int, function) -> str:
    """Best wall-clock and CPU time of ``repeats`` calls; on a shared machine the CPU time is the
    steadier figure (with one thread it is what the call costs on an idle core)."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return f"{min(wall):.3f} s (CPU {min(cpu):.3f} s)"


def unet_inputs(pipe) -> dict:
    """Random inputs of the UNet's native latent size, batch 2, with SDXL's extra conditioning."""
    config = pipe.unet.config
    size, pixels = config.sample_size, config.sample_size * pipe.vae_scale_factor
    inputs = {
        "sample": torch.randn(2, config.in_channels, size, size),
        "timestep": 500,
        "encoder_hidden_states": torch.randn(2, 77, config.cross_attention_dim),
    }
    if config.addition_embed_type == "text_time":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pipe.text_encoder_2.config.projection_dim),
            "time_ids": torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]] * 2, dtype=torch.float32),
        }
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="sd15,sdxl")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        for shape in args.shapes.split(","):
            pipe = load_pipeline(save_tiny_pipeline(Path(work) / shape, TINY_SHAPES[shape]))
            inputs = unet_inputs(pipe)
            pixels = pipe.unet.config.sample_size * pipe.vae_scale_factor
            image = torch.rand(1, 3, pixels, pixels) * 2 - 1
            latents = pipe.vae.encode(image).latent_dist.mean
            unet_s = best_of(args.repeats, lambda: pipe.unet(**inputs))
            encode_s = best_of(args.repeats, lambda: pipe.vae.encode(image))
            decode_s = best_of(args.repeats, lambda: pipe.vae.decode(latents))
            print(
                f"{shape} ({args.threads} thread(s)): UNet forward, batch 2 at {tuple(inputs['sample'].shape[2:])} "
                f"latents: {unet_s};  VAE at {pixels} px: encode {encode_s}, decode {decode_s}",
                flush=True,
            )


if __name__ == "__main__":
    main()
