"""Test images at sizes other than a scorer's input, and the published preprocessing of the
scorers written out with PIL, independently of ``harness.scoring``."""

from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])

# (width, height): wider and taller than the model input, larger and smaller squares, and a
# resize whose long side is not a whole number of pixels (40 * 32/24 = 53.3).
OTHER_SIZES = [(48, 32), (64, 96), (20, 20), (64, 64), (40, 24)]


def odd_sized_images(seed: int = 0) -> list[Image.Image]:
    """Smooth random pictures at ``OTHER_SIZES``: structure everywhere, so a crop, a pad or a squash
    shows, but no pixel noise, so resamplers that differ in rounding alone agree."""
    rng = np.random.default_rng(seed)
    coarse = [Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)) for _ in OTHER_SIZES]
    return [image.resize(size, Image.Resampling.BILINEAR) for image, size in zip(coarse, OTHER_SIZES)]


def shortest_side_and_centre_crop(image: Image.Image, size: int) -> Image.Image:
    """CLIP's preprocessing (OpenAI CLIP, the transformers CLIP processor, OpenCLIP, ImageReward):
    bicubic resize of the shortest side to ``size`` (the long side truncated to whole pixels),
    then the centre ``size`` x ``size`` square (offset rounded)."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left, top = round((new_width - size) / 2), round((new_height - size) / 2)
    return image.crop((left, top, left + size, top + size))


def longest_side_and_pad(image: Image.Image, size: int) -> Image.Image:
    """HPSv2's preprocessing: bicubic resize of the longest side to ``size`` (the other side
    rounded), pasted on a black square, the extra row or column of padding at the bottom / right."""
    width, height = image.size
    scale = size / max(width, height)
    new_width, new_height = round(width * scale), round(height * scale)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    square = Image.new("RGB", (size, size), (0, 0, 0))
    square.paste(image, ((size - new_width) // 2, (size - new_height) // 2))
    return square


def longest_side_and_pad_unrounded(image: Image.Image, size: int) -> np.ndarray:
    """The hpsv2 package's order of the same steps: the resize on floats (PIL's "F" mode, one channel at a time,
    which filters as torchvision's antialiased tensor resize does), neither rounded to 8 bits nor clipped to
    [0, 255]; an array of 0..255-scaled floats, height x width x 3."""
    width, height = image.size
    scale = size / max(width, height)
    new_width, new_height = round(width * scale), round(height * scale)
    pixels = np.asarray(image, dtype=np.float32)
    if (new_width, new_height) != (width, height):
        channels = [Image.fromarray(np.ascontiguousarray(pixels[..., c]), mode="F") for c in range(3)]
        resized = [c.resize((new_width, new_height), Image.Resampling.BICUBIC) for c in channels]
        pixels = np.stack([np.asarray(c) for c in resized], axis=-1)
    square = np.zeros((size, size, 3), dtype=np.float64)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    square[top : top + new_height, left : left + new_width] = pixels
    return square
