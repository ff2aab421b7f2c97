"""Programmatic rewards of the toy world, read off the pixels alone.

``fidelity`` asks "does the image show the caption?": for colour, shape and
position it is the probability a soft classifier gives to the caption's value,
averaged.  ``quality`` asks "is it a clean picture?": contrast, edge sharpness
and a noise-free background.  Both lie in [0, 1] and vary smoothly, so two
imperfect images can still be ranked; they are the training signals (the toy
panel labels pairs with them).

``exact`` is the held-out judge, which no toy training signal uses: a yes/no
answer to "is this exactly the caption's scene?", as GenEval-style judges give,
read another way: the whole picture is matched against the clean renderings of
all the world's scenes, not read attribute by attribute.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from toyworld.grammar import BACKGROUND, COLOURS, POSITIONS, SHAPES, Scene, all_scenes
from toyworld.render import position_centre, render, shape_coverage

# Temperatures of the soft classifiers: how fast confidence falls with distance.
_COLOUR_TEMPERATURE = 0.05  # on cosine similarity of colour directions
_SHAPE_TEMPERATURE = 0.04  # on template IoU
_POSITION_SIGMA = 0.07  # on centroid distance, fraction of the image side
# exact(): an image whose departure from its own background has an L2 norm below this shows nothing.  The
# faintest object the imperfect world draws (contrast 0.3) measures about 2.0 at 32 px.
_EXACT_PRESENCE = 1.0
# An object whose strongest pixels differ from the background by less than this is not there.
_PRESENCE_LOW, _PRESENCE_HIGH = 0.05, 0.20
_SHARP_REFERENCE = 1.0  # mask rise over two pixels at a clean edge
_NOISE_REFERENCE = 0.08  # background deviation at which "clean" reaches 0


@dataclass(frozen=True)
class Reading:
    """What the soft classifiers read in one image."""

    presence: float
    colour: dict[str, float]
    shape: dict[str, float]
    position: dict[str, float]
    contrast: float
    sharpness: float
    clean: float


def _softmax(logits: dict[str, float]) -> dict[str, float]:
    top = max(logits.values())
    weights = {k: float(np.exp(v - top)) for k, v in logits.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def _border(image: np.ndarray) -> np.ndarray:
    """Pixels of a 2-pixel frame: shapes never reach it, so it is background."""
    band = 2
    return np.concatenate(
        [
            image[:band].reshape(-1, 3),
            image[-band:].reshape(-1, 3),
            image[:, :band].reshape(-1, 3),
            image[:, -band:].reshape(-1, 3),
        ]
    )


def read(image: np.ndarray) -> Reading:
    """Classify an image (float (H, W, 3) in [0, 1]) into soft colour/shape/position beliefs and quality terms."""
    size = image.shape[0]
    border = _border(image)
    background = np.median(border, axis=0)
    distance = np.linalg.norm(image - background, axis=-1)
    strength = float(np.percentile(distance, 98))
    presence = float(np.clip((strength - _PRESENCE_LOW) / (_PRESENCE_HIGH - _PRESENCE_LOW), 0.0, 1.0))
    # Soft object mask normalised by the object's own contrast: shape and position
    # are read the same way from a washed-out image as from a vivid one.
    # The floor (background noise level) keeps speckle out of the mask.
    floor = min(float(np.percentile(np.linalg.norm(border - background, axis=-1), 95)) + 0.02, 0.5 * strength)
    mask = np.clip((distance - floor) / max(0.8 * strength - floor, 1e-6), 0.0, 1.0)
    area = float(mask.sum())
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    centroid = (float((mask * xs).sum() / max(area, 1e-6)), float((mask * ys).sum() / max(area, 1e-6)))

    core = mask >= 0.9
    mean_colour = image[core].mean(axis=0) if core.any() else background
    direction = _unit(mean_colour - background)
    colour = _softmax(
        {
            name: float(direction @ _unit(np.asarray(rgb) - background)) / _COLOUR_TEMPERATURE
            for name, rgb in COLOURS.items()
        }
    )
    shape = _softmax({name: _template_iou(mask, name, centroid, area) / _SHAPE_TEMPERATURE for name in SHAPES})
    position = _softmax(
        {
            name: -((np.hypot(*np.subtract(centroid, position_centre(name, size))) / size) ** 2)
            / (2 * _POSITION_SIGMA**2)
            for name in POSITIONS
        }
    )

    best = max(colour, key=colour.get)
    full_contrast = np.linalg.norm(np.asarray(COLOURS[best]) - np.asarray(BACKGROUND))
    contrast = float(np.clip(np.linalg.norm(mean_colour - background) / full_contrast, 0.0, 1.0))
    # Rise of the mask over two pixels: a clean edge rises fully whatever its sub-pixel offset.
    steepness = np.maximum(np.abs(mask[2:, 1:-1] - mask[:-2, 1:-1]), np.abs(mask[1:-1, 2:] - mask[1:-1, :-2]))
    sharpness = float(np.clip(np.percentile(steepness, 99) / _SHARP_REFERENCE, 0.0, 1.0))
    noise = float(np.abs(border - background).mean())
    clean = float(np.clip(1.0 - noise / _NOISE_REFERENCE, 0.0, 1.0))
    return Reading(presence, colour, shape, position, contrast, sharpness, clean)


def reading_features(reading: Reading) -> np.ndarray:
    """A reading as one vector: presence, the colour, shape and position beliefs, contrast, sharpness, clean."""
    beliefs = [reading.colour[c] for c in COLOURS] + [reading.shape[s] for s in SHAPES]
    beliefs += [reading.position[p] for p in POSITIONS]
    return np.asarray([reading.presence, *beliefs, reading.contrast, reading.sharpness, reading.clean], dtype=float)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-6)


@functools.cache
def _unit_template(shape: str, size: int) -> tuple[float, float]:
    """Area of ``shape`` at scale 1, and how far its centroid lies below its bounding-box centre."""
    unit = shape_coverage(shape, (size / 2, size / 2), size=size)
    ys = np.arange(size)[:, None] + 0.5
    return float(unit.sum()), float((unit * ys).sum() / unit.sum()) - size / 2


def _template_iou(mask: np.ndarray, shape: str, centroid: tuple[float, float], area: float) -> float:
    """Soft IoU of ``mask`` with ``shape`` scaled to the same area and moved to the same centroid."""
    size = mask.shape[0]
    unit_area, offset_y = _unit_template(shape, size)
    scale = float(np.sqrt(max(area, 1.0) / unit_area))
    # A triangle's centroid is below its bounding-box centre: shift so the centroids coincide.
    template = shape_coverage(shape, (centroid[0], centroid[1] - offset_y * scale), scale=scale, size=size)
    return float(np.minimum(mask, template).sum() / max(np.maximum(mask, template).sum(), 1e-6))


_READINGS: OrderedDict[bytes, Reading] = OrderedDict()
_MAX_READINGS = 16384  # ~ the images of a default toy run: both scorers read each image once


def cached_read(image: np.ndarray) -> Reading:
    """``read``, remembered by the image's content: the fidelity and quality scorers share one reading."""
    key = hashlib.blake2b(image.tobytes() + repr((image.shape, image.dtype.str)).encode(), digest_size=16).digest()
    reading = _READINGS.get(key)
    if reading is None:
        reading = _READINGS[key] = read(image)
        if len(_READINGS) > _MAX_READINGS:
            _READINGS.popitem(last=False)
    return reading


def fidelity(image: np.ndarray, scene: Scene) -> float:
    """How well the image shows ``scene``: mean belief in its colour, shape and position, times presence."""
    r = cached_read(image)
    return r.presence * (r.colour[scene.colour] + r.shape[scene.shape] + r.position[scene.position]) / 3.0


def quality(image: np.ndarray) -> float:
    """Picture quality regardless of the caption: mean of contrast, sharpness and clean background, times presence."""
    r = cached_read(image)
    return r.presence * (r.contrast + r.sharpness + r.clean) / 3.0


@functools.cache
def _scene_templates(size: int) -> tuple[list[Scene], np.ndarray]:
    """Every scene and its clean rendering minus the background, unit-normalised: (scenes, (n, size*size*3))."""
    scenes = all_scenes()
    templates = np.stack([render(scene, size) - np.asarray(BACKGROUND) for scene in scenes]).reshape(len(scenes), -1)
    return scenes, templates / np.linalg.norm(templates, axis=1, keepdims=True)


def exact(image: np.ndarray, scene: Scene) -> float:
    """1.0 when the image shows ``scene`` and no other, else 0.0: the held-out judge.

    The image, less its own background (the median of its border), is correlated with the clean rendering
    of every scene; it shows ``scene`` when that rendering correlates best.  Correlation ignores the
    object's contrast, so a washed-out or blurred picture of the right scene still counts: the judge asks
    what is shown, not how well.  An image with nothing standing out from its background shows no scene.
    """
    scenes, templates = _scene_templates(image.shape[0])
    departure = (image - np.median(_border(image), axis=0)).reshape(-1)
    norm = float(np.linalg.norm(departure))
    if norm < _EXACT_PRESENCE * image.shape[0] / 32:
        return 0.0
    return float(scenes[int(np.argmax(templates @ (departure / norm)))] == scene)
