"""Frozen-part features of the training set: VAE latents and text conditioning.

The VAE and the text encoders never change during preference training, so their
outputs are computed once per image / caption and cached on disk, keyed by
content (image bytes or caption text) and by a fingerprint of the encoder's
weights, so a cache can be shared between methods and runs without ever serving
a stale entry.  This removes the VAE encoder from every DPO / SmPO step.

What is cached is the VAE posterior of each image (its mean and std, scaled), once per
orientation when random flips are on: the trainer then draws a fresh latent from it each
time the image is used, as the public scripts do with ``latent_dist.sample()`` (DiffusionDPO train.py:1028), or takes
its mean (``latent_sample=False``).  Each image is encoded on its own, so a cached entry
does not depend on which other images happened to be encoded with it (batched
convolutions on a CPU differ by ~1e-6 between batch sizes): a run's features are the same
whatever an earlier, interrupted or parallel run cached first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.api.caching import LRU, atomic_save, count_damaged, load_cached
from harness.api.data import ImageSource
from harness.api.method import Cond
from harness.data.readers import ImageLoader, content_key, to_pixels
from harness.models.families import family_of

FEATURE_ENTRY = "feature-cache entry"  # how a damaged entry is counted (harness.api.caching.damage_lines)


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
    ) -> None:
        self.vae = pipe.vae
        self.pipe = pipe
        self.family = family_of(pipe)  # how a caption is encoded, and what its conditioning depends on
        self.max_sequence_length = max_sequence_length
        self.device = device
        self.resolution = resolution
        self.loader = loader
        self.memory = LRU()
        self.latent_dir = self.text_dir = None
        if cache_dir is not None:
            self.latent_dir = cache_dir / "posteriors" / f"{module_fingerprint(self.vae)}-{resolution}"
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
        return Posterior(((posterior.mean[0] - shift) * scale).float().cpu(), (posterior.std[0] * scale).float().cpu())

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
                Posterior(tensors["mean"], tensors["std"])
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
            atomic_save({"mean": value.mean, "std": value.std}, path)
        else:
            atomic_save({"hidden": value.hidden, **{f"added.{k}": v for k, v in (value.added or {}).items()}}, path)
