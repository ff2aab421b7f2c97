"""Rasterise toy scenes: anti-aliased shapes, plus the degradations of the imperfect world.

Images are float arrays (H, W, 3) in [0, 1] until ``to_pil``; coordinates are in
pixels with (0, 0) the top-left corner of the top-left pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from toyworld.grammar import BACKGROUND, COLOURS, POSITIONS, Scene

IMAGE_SIZE = 32
# Half-extent of each shape at IMAGE_SIZE 32, chosen so the three areas are
# nearly equal (113, 121, 112 px): shape cannot be told apart by size alone.
_HALF_EXTENT = {"circle": 6.0, "square": 5.5, "triangle": 7.0}
_TRIANGLE_HALF_BASE = 8.0 / 7.0  # half base / half height
_SUPERSAMPLE = 4


def shape_coverage(shape: str, centre: tuple[float, float], scale: float = 1.0, size: int = IMAGE_SIZE) -> np.ndarray:
    """Fraction of each pixel covered by ``shape`` centred (bounding-box centre) at ``centre``; (size, size)."""
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    coords = (np.arange(size)[:, None] + offsets[None, :]).reshape(-1)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    h = _HALF_EXTENT[shape] * scale * size / IMAGE_SIZE
    dx, dy = x - centre[0], y - centre[1]
    if shape == "circle":
        inside = dx**2 + dy**2 <= h**2
    elif shape == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    else:  # upward triangle: apex at the top, widening linearly to the base
        depth = (dy + h) / (2 * h)
        inside = (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * h * _TRIANGLE_HALF_BASE)
    return inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))


def position_centre(position: str, size: int = IMAGE_SIZE) -> tuple[float, float]:
    fx, fy = POSITIONS[position][0]
    return fx * size, fy * size


@dataclass(frozen=True)
class Degradation:
    """How a rendered image departs from its caption or from a clean picture."""

    colour: str | None = None  # paint with this colour instead of the caption's
    shape: str | None = None
    position: str | None = None
    blur_sigma: float = 0.0  # Gaussian blur, pixels
    contrast: float = 1.0  # 1 = full; 0.4 = shape blended 60% into the background
    jitter: tuple[float, float] = (0.0, 0.0)  # centre offset, pixels


def render(scene: Scene, size: int = IMAGE_SIZE, degradation: Degradation = Degradation()) -> np.ndarray:
    """The image of ``scene`` (clean unless ``degradation`` says otherwise), float (size, size, 3)."""
    d = degradation
    cx, cy = position_centre(d.position or scene.position, size)
    mask = shape_coverage(d.shape or scene.shape, (cx + d.jitter[0], cy + d.jitter[1]), size=size)
    background = np.asarray(BACKGROUND)
    colour = background + d.contrast * (np.asarray(COLOURS[d.colour or scene.colour]) - background)
    image = background + mask[..., None] * (colour - background)
    if d.blur_sigma > 0:
        image = gaussian_blur(image, d.blur_sigma)
    return np.clip(image, 0.0, 1.0)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication, (H, W, C) float."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(image, pad, mode="edge")
        image = sum(w * np.take(padded, np.arange(k, k + image.shape[axis]), axis=axis) for k, w in enumerate(taps))
    return image


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


def from_pil(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
