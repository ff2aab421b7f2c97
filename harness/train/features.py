"""Frozen-part features of the training set: VAE latents and text conditioning.

The VAE and the text encoders never change during preference training, so their
outputs are computed once per image / caption and cached on disk, keyed by
content (image bytes or caption text) and by a fingerprint of the encoder's
weights, so a cache can be shared between methods and runs without ever serving
a stale entry.  This removes the VAE encoder from every DPO / SmPO step.

What is cached is the VAE posterior of each image (its mean and std, scaled), once per
orientation when random flips are on: the trainer then draws a fresh latent from it each
time the image is used, as the public scripts do with ``latent_dist.sample()`` (DiffusionDPO train.py:1028), or takes
its mean (``latent_sample=False``).  The posterior is rounded to ``latent_precision`` when encoded
(float16 halves the cache), so a cached and an uncached run see the same numbers; each precision has
its own folder.  Each image is encoded on its own, so a cached entry does not depend on which other
images happened to be encoded with it (batched convolutions on a CPU differ by ~1e-6 between batch
sizes): a run's features are the same whatever an earlier, interrupted or parallel run cached first.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.api.caching import LRU, atomic_save, count_damaged, load_cached
from harness.api.data import ImageSource
from harness.api.environment import cache_dir
from harness.api.method import Cond, TrainConfig
from harness.data.readers import ImageLoader, content_key, to_pixels
from harness.models.families import family_of

FEATURE_ENTRY = "feature-cache entry"  # how a damaged entry is counted (harness.api.caching.damage_lines)
LATENT_DTYPES = {"float16": torch.float16, "float32": torch.float32}  # TrainConfig.latent_precision
# cache_features="auto" caches when the estimate takes at most this share of the free space: checkpoints, images
# and the text cache need the rest.
AUTO_FREE_SHARE = 0.5


def feature_cache_dir(config: TrainConfig) -> Path:
    """Where a training's features are cached: its ``cache_dir``, else ``$HARNESS_CACHE/train-features``."""
    return Path(config.cache_dir) if config.cache_dir else cache_dir() / "train-features"


def samples_per_step(config: TrainConfig, processes: int = 1) -> int:
    """Samples (pairs, or images) per optimizer step over ``processes``: the effective batch."""
    return config.effective_batch_size or config.batch_size * config.grad_accum * processes


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (its nearest existing folder: the cache may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class CacheEstimate:
    """What caching a training's latents costs on disk, against what its disk has free.

    ``images``: images encoded over the training (steps x samples per step x images per sample; the trainer, which
    knows the data, caps it at each distinct image in each orientation), each cached once per orientation it is
    drawn in, so an upper bound; ``latent_shape``: (C, H, W) of one latent;
    ``precision``: ``latent_precision``; ``free``: free bytes on the cache's disk (``free_space``)."""

    images: int
    latent_shape: tuple[int, int, int]
    precision: str
    free: int

    @property
    def per_image(self) -> int:
        """Bytes of one cached posterior: its mean and std, each C x H x W at ``precision``."""
        return 2 * math.prod(self.latent_shape) * LATENT_DTYPES[self.precision].itemsize

    @property
    def needed(self) -> int:
        return self.images * self.per_image

    def caches(self, setting: bool | str) -> bool:
        """``cache_features`` decided: True / False as given, "auto" by the estimate against the free space."""
        return self.needed <= AUTO_FREE_SHARE * self.free if setting == "auto" else bool(setting)

    def describe(self, setting: bool | str) -> str:
        """One line: the estimate, the free space and the decision (e.g. ``auto -> on``)."""
        decided = "on" if self.caches(setting) else "off"
        return (
            f"{'auto' if setting == 'auto' else 'set'} -> {decided}: latents <= {_size(self.needed)} "
            f"({self.images:,} images x {_size(self.per_image)}, {'x'.join(map(str, self.latent_shape))} "
            f"{self.precision}), {_size(self.free)} free"
        )


def _size(n: float) -> str:
    """``n`` bytes in binary units: "64.0 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def module_fingerprint(*modules: torch.nn.Module) -> str:
    """Hash of the weights: two encoders with the same fingerprint produce the same features."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Posterior:
    """One image's VAE posterior in latent units (already shifted and multiplied by the VAE's factors)."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """``latent_dist.sample() * scaling_factor``, with the noise drawn from ``generator`` on the CPU."""
        return self.mean + self.std * torch.randn(self.mean.shape, generator=generator)


class FeatureEncoder:
    """Latents and conditioning for training samples, cached when ``cache_dir`` is set."""

    def __init__(
        self,
        pipe: Any,
        *,
        device: torch.device,
        resolution: int,
        cache_dir: Path | None,
        loader: ImageLoader,
        max_sequence_length: int = 256,
        precision: str = "float16",
    ) -> None:
        self.vae = pipe.vae
        self.pipe = pipe
        self.family = family_of(pipe)  # how a caption is encoded, and what its conditioning depends on
        self.max_sequence_length = max_sequence_length
        self.device = device
        self.resolution = resolution
        self.loader = loader
        self.latent_dtype = LATENT_DTYPES[precision]
        self.memory = LRU()
        self.latent_dir = self.text_dir = None
        if cache_dir is not None:
            # float32 keeps the folder of the caches written before latent_precision existed
            suffix = "" if precision == "float32" else f"-{precision}"
            self.latent_dir = cache_dir / "posteriors" / f"{module_fingerprint(self.vae)}-{resolution}{suffix}"
            self.text_dir = (
                cache_dir
                / "text"
                / (
                    f"{module_fingerprint(*self.family.text_encoders(pipe))}-{resolution}"
                    f"{self.family.text_key(max_sequence_length)}"
                )
            )

    # -- latents ----------------------------------------------------------------------------------
    def latents(
        self, sources: list[ImageSource], flips: list[bool] | None = None, size_from: list[int | None] | None = None
    ) -> list[tuple[str, Posterior | None]]:
        """(key, posterior or None if the image is corrupt) for each source, flipped where ``flips`` says, and
        first resized to the size of source ``size_from[i]`` where that is set (MaPO's pairs).

        The key names the image's content, the size it took and its orientation, for per-image caches downstream.
        """
        flips = flips or [False] * len(sources)
        size_from = size_from or [None] * len(sources)
        result = []
        for source, flip, other in zip(sources, flips, size_from):
            sized_like = None if other is None else sources[other]
            key = (
                content_key(source)
                + ("" if sized_like is None else f"-sized-like-{content_key(sized_like)}")
                + ("-flip" if flip else "")
            )
            posterior = self._load("latent", key)
            if posterior is None:
                image = self.loader.load(source)
                if image is not None and sized_like is not None:
                    like = self.loader.load(sized_like)
                    # PIL's resize with its default filter, as mapo utils.py:207-211 (corrupt: the pair is replaced)
                    image = None if like is None else image.resize(like.size)
                if image is not None:
                    posterior = self._encode_image(to_pixels(image, self.resolution, flip=flip))
                    self._store("latent", key, posterior)
            result.append((key, posterior))
        return result

    @torch.no_grad()
    def _encode_image(self, pixels: torch.Tensor) -> Posterior:
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(pixels[None].to(self.device, dtype)).latent_dist
        scale = self.vae.config.scaling_factor
        shift = self.vae.config.get("shift_factor") or 0.0  # a shifted VAE (SD3's): latents are (z - shift) * scale
        mean, std = (posterior.mean[0] - shift) * scale, posterior.std[0] * scale
        # Rounded here, not when stored: cached or not, every use sees the same fp32 values.
        return Posterior(*(t.to(self.latent_dtype).float().cpu() for t in (mean, std)))

    # -- text -------------------------------------------------------------------------------------
    def cond(self, captions: list[str]) -> Cond:
        parts = []
        for caption in captions:
            key = hashlib.sha256(caption.encode()).hexdigest()[:32]
            cached = self._load("text", key)
            if cached is None:
                cached = self._encode_text(caption)
                self._store("text", key, cached)
            parts.append(cached)
        return Cond.cat(parts).to(self.device)

    @torch.no_grad()
    def _encode_text(self, caption: str) -> Cond:
        return self.family.encode_caption(
            self.pipe,
            caption,
            device=self.device,
            resolution=self.resolution,
            max_sequence_length=self.max_sequence_length,
        )

    # -- storage ----------------------------------------------------------------------------------
    def _path(self, kind: str, key: str) -> Path | None:
        directory = self.latent_dir if kind == "latent" else self.text_dir
        return None if directory is None else directory / key[:2] / f"{key}.safetensors"

    def _load(self, kind: str, key: str):
        cached = self.memory.get_item(kind + key)
        if cached is not None:
            return cached
        path = self._path(kind, key)
        tensors = None if path is None else load_cached(path, FEATURE_ENTRY)
        if tensors is None:
            return None
        try:
            value = (
                Posterior(tensors["mean"].float(), tensors["std"].float())
                if kind == "latent"
                else Cond(tensors["hidden"], {k[6:]: v for k, v in tensors.items() if k.startswith("added.")} or None)
            )
        except KeyError:  # a whole file of the wrong content: as damaged as a truncated one
            path.unlink(missing_ok=True)
            count_damaged(FEATURE_ENTRY)
            return None
        self.memory.put(kind + key, value)
        return value

    def _store(self, kind: str, key: str, value) -> None:
        path = self._path(kind, key)
        if path is None:
            return  # caching off: every step encodes again (the public scripts' behaviour)
        self.memory.put(kind + key, value)
        if kind == "latent":
            atomic_save({"mean": value.mean.to(self.latent_dtype), "std": value.std.to(self.latent_dtype)}, path)
        else:
            atomic_save({"hidden": value.hidden, **{f"added.{k}": v for k, v in (value.added or {}).items()}}, path)
