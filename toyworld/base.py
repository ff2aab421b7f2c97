"""The toy world's base model: a tiny SD-shaped pipeline trained on an *imperfect* version of the world.

The training images are drawn from the seen combinations only, and a share of
them is wrong (another colour, shape or place) or poor (blurred, washed out),
so the base model is mediocre in exactly the ways the toy rewards measure and
alignment has room to help.

The weights are one safetensors file (fp16, a few MB).  ``build_weights``
reproduces it bit for bit on the same machine and torch version: all
randomness comes from seeded generators and the thread count is fixed (CPU
kernels give identical results for a given thread count).  ``ensure_base_model`` turns the file (the committed
one, or a freshly trained one when it is missing) into a diffusers pipeline
directory in the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from harness.api import TinyPipelineConfig, build_tiny_pipeline, publishing, register_base_model, replacing
from harness.api import cache_dir as default_cache_dir
from toyworld.grammar import COLOURS, POSITIONS, SHAPES, seen_scenes
from toyworld.render import IMAGE_SIZE, Degradation, render

COMMITTED_WEIGHTS = Path(__file__).with_name("base.safetensors")
PIPELINE_CONFIG = TinyPipelineConfig(image_size=IMAGE_SIZE, block_out_channels=(32, 64), vae_block_out_channels=(32, 32, 64))
_COMPONENTS = ("vae", "text_encoder", "unet")


@dataclass(frozen=True)
class Imperfection:
    """Share of training images with each defect (drawn independently)."""

    wrong_colour: float = 0.3
    wrong_shape: float = 0.1
    wrong_position: float = 0.1
    blur: float = 0.3  # sigma uniform in [0.8, 1.6] px
    low_contrast: float = 0.3  # contrast uniform in [0.3, 0.6]


@dataclass(frozen=True)
class BuildSettings:
    dataset_size: int = 4096
    vae_steps: int = 300
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 1500
    unet_batch_size: int = 64
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    caption_dropout: float = 0.1  # share of empty captions, so classifier-free guidance works
    threads: int = 1  # fixed: CPU reductions are split by thread count, so results depend on it
    seed: int = 0
    imperfection: Imperfection = Imperfection()


def imperfect_dataset(size: int, imperfection: Imperfection, seed: int) -> tuple[np.ndarray, list[str]]:
    """``size`` images (float32 (N, 3, H, W) in [-1, 1]) of seen scenes, a share of them wrong or poor, and their captions."""
    rng = np.random.default_rng(seed)
    scenes = seen_scenes()

    def other(values: list[str], current: str) -> str:
        choices = [v for v in values if v != current]
        return choices[rng.integers(len(choices))]

    images, captions = [], []
    p = imperfection
    for _ in range(size):
        scene = scenes[rng.integers(len(scenes))]
        degradation = Degradation(
            colour=other(list(COLOURS), scene.colour) if rng.random() < p.wrong_colour else None,
            shape=other(list(SHAPES), scene.shape) if rng.random() < p.wrong_shape else None,
            position=other(list(POSITIONS), scene.position) if rng.random() < p.wrong_position else None,
            blur_sigma=float(rng.uniform(0.8, 1.6)) if rng.random() < p.blur else 0.0,
            contrast=float(rng.uniform(0.3, 0.6)) if rng.random() < p.low_contrast else 1.0,
            jitter=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        )
        images.append(render(scene, degradation=degradation))
        captions.append(scene.caption)
    pixels = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) * 2 - 1
    return pixels, captions


def _round_to_fp16(module: torch.nn.Module) -> None:
    # The weights are stored in fp16: train later stages on exactly what will be loaded.
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.half().float())


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def encode_captions(pipe, captions: list[str]) -> torch.Tensor:
    """The frozen text encoder's hidden states, exactly as the pipeline computes them at sampling time."""
    tokens = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return pipe.text_encoder(tokens.input_ids)[0]


def _train_vae(vae, pixels: torch.Tensor, s: BuildSettings, generator: torch.Generator, log) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(s.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = s.vae_lr * _lr_factor(step, s.vae_steps, s.warmup_steps)
        batch = pixels[torch.randint(len(pixels), (s.vae_batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        loss = (reconstruction - batch).pow(2).mean() + s.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log("vae", step, s.vae_steps, loss.item())
    vae.eval()


def _train_unet(pipe, latents: torch.Tensor, caption_ids: torch.Tensor, embeddings: torch.Tensor, s: BuildSettings,
                generator: torch.Generator, log) -> None:
    """Epsilon-prediction denoising loss; the last row of ``embeddings`` is the empty caption."""
    unet, scheduler = pipe.unet, pipe.scheduler
    optimizer = torch.optim.AdamW(unet.parameters(), lr=s.unet_lr, weight_decay=0.0)
    empty = len(embeddings) - 1
    unet.train()
    for step in range(s.unet_steps):
        for group in optimizer.param_groups:
            group["lr"] = s.unet_lr * _lr_factor(step, s.unet_steps, s.warmup_steps)
        index = torch.randint(len(latents), (s.unet_batch_size,), generator=generator)
        x0 = latents[index]
        ids = torch.where(torch.rand(len(index), generator=generator) < s.caption_dropout, empty, caption_ids[index])
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, embeddings[ids]).sample
        loss = (prediction - noise).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log("unet", step, s.unet_steps, loss.item())
    unet.eval()


def build_weights(out_path: str | Path, settings: BuildSettings = BuildSettings(), tokenizer_dir: str | Path | None = None,
                  verbose: bool = True) -> Path:
    """Train the toy base model and write its weights (fp16 safetensors) atomically to ``out_path``."""
    from safetensors.torch import save_file

    out_path = Path(out_path)
    s = settings
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    started = time.perf_counter()

    def log(stage: str, step: int, total: int, loss: float) -> None:
        if verbose and (step % 100 == 0 or step == total - 1):
            print(f"[toy base] {stage} step {step + 1}/{total} loss {loss:.4f} ({time.perf_counter() - started:.0f}s)", flush=True)

    try:
        pipe = build_tiny_pipeline(PIPELINE_CONFIG, tokenizer_dir=tokenizer_dir or default_cache_dir() / "clip-tokenizer")
        _round_to_fp16(pipe.text_encoder)
        generator = torch.Generator().manual_seed(s.seed)
        pixels_np, captions = imperfect_dataset(s.dataset_size, s.imperfection, s.seed)
        pixels = torch.from_numpy(pixels_np)

        _train_vae(pipe.vae, pixels, s, generator, log)
        _round_to_fp16(pipe.vae)
        with torch.no_grad():
            raw = torch.cat([pipe.vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])
        # SD's convention: latents scaled to unit variance before diffusion.
        scaling_factor = float(f"{1.0 / raw.std().item():.6g}")
        pipe.vae.register_to_config(scaling_factor=scaling_factor)

        vocabulary = sorted(set(captions))
        caption_ids = torch.tensor([vocabulary.index(c) for c in captions])
        embeddings = encode_captions(pipe, vocabulary + [""])
        _train_unet(pipe, raw * scaling_factor, caption_ids, embeddings, s, generator, log)

        tensors = {
            f"{name}.{key}": value.detach().half().contiguous()
            for name in _COMPONENTS
            for key, value in getattr(pipe, name).state_dict().items()
        }
        # One metadata entry: safetensors writes several in a random order, which would change the file's bytes.
        description = {
            "pipeline_config": asdict(PIPELINE_CONFIG),
            "scaling_factor": scaling_factor,
            "build_settings": asdict(s),
            "torch": torch.__version__,
        }
        metadata = {"toy_base": json.dumps(description, sort_keys=True)}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out_path) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
    finally:
        torch.set_num_threads(previous_threads)
    return out_path


def pipeline_from_weights(weights: str | Path, tokenizer_dir: str | Path | None = None):
    """A float32 StableDiffusionPipeline holding the weights of a toy base file."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key).float() for key in f.keys()}
    description = json.loads(metadata["toy_base"])
    config = TinyPipelineConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in description["pipeline_config"].items()})
    pipe = build_tiny_pipeline(config, tokenizer_dir=tokenizer_dir or default_cache_dir() / "clip-tokenizer")
    for name in _COMPONENTS:
        prefix = name + "."
        getattr(pipe, name).load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    pipe.vae.register_to_config(scaling_factor=description["scaling_factor"])
    return pipe


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@register_base_model("toy")
def toy_base_model() -> str:
    return str(ensure_base_model())


def ensure_base_model(cache_dir: Path | None = None) -> Path:
    """Directory (diffusers format) of the toy base pipeline, built from the committed weights or trained once."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights = COMMITTED_WEIGHTS
    if not weights.exists():
        weights = cache_dir / "toy-base.safetensors"
        if not weights.exists():
            print(f"[toy base] no committed weights; training the toy base model once into {weights}", flush=True)
            build_weights(weights, tokenizer_dir=cache_dir / "clip-tokenizer")
    out = cache_dir / f"toy-base-{file_digest(weights)[:12]}"
    if (out / "model_index.json").exists():
        return out
    with publishing(out) as temporary:  # concurrent processes (several ranks) may build at once
        pipeline_from_weights(weights, tokenizer_dir=cache_dir / "clip-tokenizer").save_pretrained(temporary)
    return out
