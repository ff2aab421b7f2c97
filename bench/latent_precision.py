"""The error of float16 (and, for comparison, bfloat16) feature caches against float32 (docs/scaling.md).

Encodes ``--images`` images of the synthetic Pick-a-Pic split (``harness.testing.pickapic``) with a base model's
VAE as the trainer does (``FeatureEncoder._encode_image``, latent units), once per precision, and reports per
tensor (the posterior's mean and std):

- ``rel_rms``: ||rounded - fp32|| / ||fp32|| over all images;
- ``rel_max``: the largest |rounded - fp32| / |fp32| of one element (elements with |fp32| > 1e-4);
- ``vs_std``: the rounding of the mean against the posterior std, the noise ``latent_sample`` adds at every use.

Rounding to a float format has a relative error bounded by the format (2^-11 = 4.9e-4 for float16, 2^-8 = 3.9e-3
for bfloat16) whatever the VAE, so the toy base's VAE (trained, 8 x 8 latents) stands in for SD's here.

Usage: ``python bench/latent_precision.py [--model toy] [--images 64] [--resolution 64]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from harness.data.readers import ImageLoader, load_pairs, to_pixels
from harness.models.loading import load_pipeline
from harness.plan.locations import resolve_base_model
from harness.testing.pickapic import write_pickapic
from harness.train.features import FeatureEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    pipe = load_pipeline(resolve_base_model(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        pairs = load_pairs(write_pickapic(Path(tmp), args.images // 2 + args.images // 10 + 1, image_size=64))
        loader = ImageLoader()
        pixels = [
            to_pixels(loader.load(image), args.resolution) for pair in pairs for image in (pair.image_w, pair.image_l)
        ]
    pixels = pixels[: args.images]

    def encode(precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = FeatureEncoder(
            pipe, device=torch.device("cpu"), resolution=args.resolution, cache_dir=None, loader=ImageLoader()
        )
        # bfloat16 is no latent_precision choice: set on the encoder for the comparison only
        encoder.latent_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            precision
        ]
        posteriors = [encoder._encode_image(p) for p in pixels]
        return torch.stack([p.mean for p in posteriors]), torch.stack([p.std for p in posteriors])

    exact = encode("float32")
    result = {}
    for precision in ("float16", "bfloat16"):
        rounded = encode(precision)
        for name, a, b in zip(("mean", "std"), exact, rounded):
            big = a.abs() > 1e-4
            result[f"{precision}/{name}"] = {
                "rel_rms": float((b - a).norm() / a.norm()),
                "rel_max": float(((b - a).abs()[big] / a.abs()[big]).max()),
            }
        result[f"{precision}/mean"]["vs_std"] = float((rounded[0] - exact[0]).abs().mean() / exact[1].mean())
    result["images"] = len(pixels)
    result["latent_shape"] = list(exact[0].shape[1:])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
