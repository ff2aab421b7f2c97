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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from harness.api import (
    TinyPipelineConfig,
    build_tiny_pipeline,
    publishing,
    register_base_model,
    replacing,
    save_pipeline,
)
from harness.api import cache_dir as default_cache_dir
from harness.api.caching import built_model_ready
from harness.api.noise import FlowMatching
from toyworld.grammar import COLOURS, POSITIONS, SHAPES, seen_scenes
from toyworld.render import IMAGE_SIZE, Degradation, render

COMMITTED_WEIGHTS = Path(__file__).with_name("base.safetensors")
PIPELINE_CONFIG = TinyPipelineConfig(
    image_size=IMAGE_SIZE, block_out_channels=(32, 64), vae_block_out_channels=(32, 32, 64)
)
_COMPONENTS = ("vae", "text_encoder", "unet")

# The flow-matching twin: SD3's layout around the toy base's VAE (4 latent channels, 8x8 latents, so 4x4
# patches of 2x2 for the transformer); sizes chosen in docs/toy-world.md ("Flow-matching twin").
FLOW_WEIGHTS = Path(__file__).with_name("base-flow.safetensors")
FLOW_PIPELINE_CONFIG = TinyPipelineConfig(
    layout="sd3",
    image_size=IMAGE_SIZE,
    latent_channels=4,
    vae_block_out_channels=PIPELINE_CONFIG.vae_block_out_channels,
    transformer_layers=3,
    transformer_heads=2,
    transformer_head_dim=16,
)
_FLOW_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "transformer")


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


# The flow twin trains only its transformer (the VAE is the toy base's): chosen in docs/toy-world.md.
FLOW_BUILD_SETTINGS = BuildSettings(unet_steps=1000, unet_batch_size=64, unet_lr=1e-3)


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
    tokens = pipe.tokenizer(
        captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return pipe.text_encoder(tokens.input_ids)[0]


def _fit(
    network: torch.nn.Module,
    steps: int,
    lr: float,
    warmup: int,
    batch_loss: Callable[[], torch.Tensor],
    log: Callable,
    stage: str,
) -> None:
    """AdamW on ``network`` for ``steps`` steps (linear warmup, cosine decay), ``batch_loss()`` drawing each batch."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=0.0)
    network.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup)
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log(stage, step, steps, loss.item())
    network.eval()


def _train_vae(vae, pixels: torch.Tensor, s: BuildSettings, generator: torch.Generator, log) -> None:
    def batch_loss() -> torch.Tensor:
        batch = pixels[torch.randint(len(pixels), (s.vae_batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        return (reconstruction - batch).pow(2).mean() + s.vae_kl_weight * posterior.kl().mean()

    _fit(vae, s.vae_steps, s.vae_lr, s.warmup_steps, batch_loss, log, "vae")


def _conditioned_batch(
    latents: torch.Tensor, caption_ids: torch.Tensor, empty: int, s: BuildSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of latents and their caption ids, a share of them (``caption_dropout``) replaced by ``empty``."""
    index = torch.randint(len(latents), (s.unet_batch_size,), generator=generator)
    ids = torch.where(torch.rand(len(index), generator=generator) < s.caption_dropout, empty, caption_ids[index])
    return latents[index], ids


def _train_unet(
    pipe,
    latents: torch.Tensor,
    caption_ids: torch.Tensor,
    embeddings: torch.Tensor,
    s: BuildSettings,
    generator: torch.Generator,
    log,
) -> None:
    """Epsilon-prediction denoising loss; the last row of ``embeddings`` is the empty caption."""
    unet, scheduler = pipe.unet, pipe.scheduler

    def batch_loss() -> torch.Tensor:
        x0, ids = _conditioned_batch(latents, caption_ids, len(embeddings) - 1, s, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, embeddings[ids]).sample
        return (prediction - noise).pow(2).mean()

    _fit(unet, s.unet_steps, s.unet_lr, s.warmup_steps, batch_loss, log, "unet")


def _train_transformer(
    pipe,
    latents: torch.Tensor,
    caption_ids: torch.Tensor,
    hidden: torch.Tensor,
    pooled: torch.Tensor,
    s: BuildSettings,
    generator: torch.Generator,
    log,
) -> None:
    """SD3's flow-matching loss (velocity target, logit-normal noise levels on the shifted grid, unweighted), the
    same process the alignment methods train with; the last rows of ``hidden`` / ``pooled`` are the empty caption."""
    transformer, process = pipe.transformer, FlowMatching.from_scheduler(pipe.scheduler)

    def batch_loss() -> torch.Tensor:
        x0, ids = _conditioned_batch(latents, caption_ids, len(hidden) - 1, s, generator)
        x_t, t, target = process.noisy(x0, generator)
        prediction = transformer(
            hidden_states=x_t, timestep=t, encoder_hidden_states=hidden[ids], pooled_projections=pooled[ids]
        ).sample
        return (prediction - target).pow(2).mean()

    _fit(transformer, s.unet_steps, s.unet_lr, s.warmup_steps, batch_loss, log, "transformer")


@contextmanager
def _fixed_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _progress_log(name: str, verbose: bool) -> Callable[[str, int, int, float], None]:
    started = time.perf_counter()

    def log(stage: str, step: int, total: int, loss: float) -> None:
        if verbose and (step % 100 == 0 or step == total - 1):
            print(
                f"[{name}] {stage} step {step + 1}/{total} loss {loss:.4f} ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )

    return log


def _caption_vocabulary(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct captions (plus the empty one, last) and each training caption's index among them."""
    vocabulary = sorted(set(captions))
    return vocabulary + [""], torch.tensor([vocabulary.index(c) for c in captions])


def _write_weights(out_path: Path, pipe, components: tuple[str, ...], description: dict) -> Path:
    """The components' weights as fp16 safetensors, written atomically, with ``description`` as metadata."""
    from safetensors.torch import save_file

    tensors = {
        f"{name}.{key}": value.detach().half().contiguous()
        for name in components
        for key, value in getattr(pipe, name).state_dict().items()
    }
    # One metadata entry: safetensors writes several in a random order, which would change the file's bytes.
    metadata = {"toy_base": json.dumps({**description, "torch": torch.__version__}, sort_keys=True)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out_path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return out_path


def build_weights(
    out_path: str | Path,
    settings: BuildSettings = BuildSettings(),
    tokenizer_dir: str | Path | None = None,
    verbose: bool = True,
) -> Path:
    """Train the toy base model and write its weights (fp16 safetensors) atomically to ``out_path``."""
    s = settings
    log = _progress_log("toy base", verbose)
    with _fixed_threads(s.threads):
        pipe = build_tiny_pipeline(
            PIPELINE_CONFIG, tokenizer_dir=tokenizer_dir or default_cache_dir() / "clip-tokenizer"
        )
        _round_to_fp16(pipe.text_encoder)
        generator = torch.Generator().manual_seed(s.seed)
        pixels_np, captions = imperfect_dataset(s.dataset_size, s.imperfection, s.seed)
        pixels = torch.from_numpy(pixels_np)

        _train_vae(pipe.vae, pixels, s, generator, log)
        _round_to_fp16(pipe.vae)
        raw = _latent_means(pipe.vae, pixels)
        # SD's convention: latents scaled to unit variance before diffusion.
        scaling_factor = _six_digits(1.0 / raw.std().item())
        pipe.vae.register_to_config(scaling_factor=scaling_factor)

        vocabulary, caption_ids = _caption_vocabulary(captions)
        embeddings = encode_captions(pipe, vocabulary)
        _train_unet(pipe, raw * scaling_factor, caption_ids, embeddings, s, generator, log)
        description = {
            "pipeline_config": PIPELINE_CONFIG.recorded(),
            "scaling_factor": scaling_factor,
            "build_settings": asdict(s),
        }
        return _write_weights(Path(out_path), pipe, _COMPONENTS, description)


def _six_digits(value: float) -> float:
    # Stored in a JSON config: a short decimal that reads back exactly.
    return float(f"{value:.6g}")


@torch.no_grad()
def _latent_means(vae, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])


def build_flow_weights(
    out_path: str | Path,
    settings: BuildSettings = FLOW_BUILD_SETTINGS,
    toy_weights: str | Path = COMMITTED_WEIGHTS,
    tokenizer_dir: str | Path | None = None,
    verbose: bool = True,
) -> Path:
    """Train the toy base's flow-matching twin and write its weights (fp16 safetensors) atomically to ``out_path``.

    An SD3-shaped pipeline (``FLOW_PIPELINE_CONFIG``: MMDiT transformer, two frozen random CLIP encoders, no
    T5) on the toy base's training set, with the toy base's trained VAE (from ``toy_weights``) given SD3's
    latent normalisation: ``(z - shift_factor) * scaling_factor``, shift the latents' mean, scale one over
    their std.  The ``vae_*`` settings are unused.
    """
    s = settings
    log = _progress_log("toy flow base", verbose)
    tokenizer_dir = tokenizer_dir or default_cache_dir() / "clip-tokenizer"
    with _fixed_threads(s.threads):
        vae = pipeline_from_weights(toy_weights, tokenizer_dir=tokenizer_dir).vae
        pipe = build_tiny_pipeline(FLOW_PIPELINE_CONFIG, tokenizer_dir=tokenizer_dir)
        pipe.register_modules(vae=vae)
        _round_to_fp16(pipe.text_encoder)
        _round_to_fp16(pipe.text_encoder_2)
        generator = torch.Generator().manual_seed(s.seed)
        pixels_np, captions = imperfect_dataset(s.dataset_size, s.imperfection, s.seed)

        raw = _latent_means(vae, torch.from_numpy(pixels_np))
        shift_factor = _six_digits(raw.mean().item())
        scaling_factor = _six_digits(1.0 / (raw - shift_factor).std().item())
        vae.register_to_config(shift_factor=shift_factor, scaling_factor=scaling_factor)

        vocabulary, caption_ids = _caption_vocabulary(captions)
        with torch.no_grad():  # exactly the conditioning the pipeline computes at sampling time (T5's zeros included)
            hidden, _, pooled, _ = pipe.encode_prompt(vocabulary, None, None, do_classifier_free_guidance=False)
        _train_transformer(pipe, (raw - shift_factor) * scaling_factor, caption_ids, hidden, pooled, s, generator, log)
        description = {
            "pipeline_config": FLOW_PIPELINE_CONFIG.recorded(),
            "vae_config": {k: v for k, v in vae.config.items() if not k.startswith("_")},
            "vae_from": file_digest(toy_weights),
            "scaling_factor": scaling_factor,
            "shift_factor": shift_factor,
            "build_settings": asdict(s),
            "components": list(_FLOW_COMPONENTS),
        }
        return _write_weights(Path(out_path), pipe, _FLOW_COMPONENTS, description)


def read_description(weights: str | Path) -> dict:
    """The metadata a toy base file was written with (its pipeline config, build settings, ...)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return json.loads(f.metadata()["toy_base"])


def pipeline_config(description: dict) -> TinyPipelineConfig:
    """The pipeline shape a toy base file's description records (fields added since take their defaults)."""
    return TinyPipelineConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in description["pipeline_config"].items()}
    )


def pipeline_from_weights(weights: str | Path, tokenizer_dir: str | Path | None = None):
    """A float32 pipeline holding the weights of a toy base file: StableDiffusionPipeline for the toy base,
    StableDiffusion3Pipeline for its flow twin."""
    from safetensors import safe_open

    description = read_description(weights)
    with safe_open(str(weights), framework="pt") as f:
        tensors = {key: f.get_tensor(key).float() for key in f.keys()}
    pipe = build_tiny_pipeline(
        pipeline_config(description), tokenizer_dir=tokenizer_dir or default_cache_dir() / "clip-tokenizer"
    )
    if "vae_config" in description:  # the flow twin holds the toy base's VAE, not the one its layout builds
        from diffusers import AutoencoderKL

        pipe.register_modules(vae=AutoencoderKL.from_config(description["vae_config"]))
    for name in description.get("components", _COMPONENTS):
        prefix = name + "."
        getattr(pipe, name).load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    pipe.vae.register_to_config(scaling_factor=description["scaling_factor"])
    if "shift_factor" in description:
        pipe.vae.register_to_config(shift_factor=description["shift_factor"])
    return pipe


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@register_base_model("toy")
def toy_base_model() -> str:
    return str(ensure_base_model())


@register_base_model("toy-flow")
def toy_flow_base_model() -> str:
    return str(ensure_flow_base_model())


def _weights(committed: Path, cached: str, build: Callable[[Path, str | Path], Path], cache_dir: Path) -> Path:
    """The committed weights file, or one trained once into the cache when it is missing."""
    if committed.exists():
        return committed
    weights = cache_dir / cached
    if not weights.exists():
        print(f"[toy base] no committed weights; training {cached} once into {weights}", flush=True)
        build(weights, cache_dir / "clip-tokenizer")
    return weights


def _pipeline_dir(weights: Path, name: str, cache_dir: Path) -> Path:
    out = cache_dir / f"{name}-{file_digest(weights)[:12]}"
    if built_model_ready(out):
        return out
    with publishing(out) as temporary:  # concurrent processes (several ranks) may build at once
        save_pipeline(pipeline_from_weights(weights, tokenizer_dir=cache_dir / "clip-tokenizer"), temporary)
    return out


def _toy_weights(cache_dir: Path) -> Path:
    return _weights(
        COMMITTED_WEIGHTS,
        "toy-base.safetensors",
        lambda out, tokenizer_dir: build_weights(out, tokenizer_dir=tokenizer_dir),
        cache_dir,
    )


def ensure_base_model(cache_dir: Path | None = None) -> Path:
    """Directory (diffusers format) of the toy base pipeline, built from the committed weights or trained once."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _pipeline_dir(_toy_weights(cache_dir), "toy-base", cache_dir)


def ensure_flow_base_model(cache_dir: Path | None = None) -> Path:
    """Directory (diffusers format) of the flow twin's pipeline, built from the committed weights or trained once
    (on the toy base's VAE)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights = _weights(
        FLOW_WEIGHTS,
        "toy-flow-base.safetensors",
        lambda out, tokenizer_dir: build_flow_weights(
            out, toy_weights=_toy_weights(cache_dir), tokenizer_dir=tokenizer_dir
        ),
        cache_dir,
    )
    return _pipeline_dir(weights, "toy-flow-base", cache_dir)
