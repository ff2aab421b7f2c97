"""Human Preference Score v2.0 and v2.1 (Wu et al. 2023): OpenCLIP ViT-H/14 tuned on HPD v2.

The two checkpoints are separate metrics: papers report one or the other, never mixed.  We load
them into the maintained ``open_clip_torch`` rather than depend on the ``hpsv2`` package, which
pins protobuf<4 and pytest at run time and ships without its BPE vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image

from harness.api.registry import register_scorer
from harness.scoring._openclip import OpenClipScorer

if TYPE_CHECKING:
    import torch

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def hps_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """HPSv2's evaluation preprocessing, in the hpsv2 package's order (hpsv2/src/open_clip/transform.py:140-156
    and ``ResizeMaxSize`` at :37-49, chosen by factory.py:368-375; github.com/tgxs002/HPSv2 at 866735e): the image
    to a float tensor, its longest side to ``size`` (bicubic on the float tensor, antialiased), zero-pad to a
    centred square, then CLIP normalisation.  Unlike CLIP's centre crop it keeps the whole image.

    The package leaves ``antialias`` to torchvision, whose default for tensors is True since 0.17 (the official
    environment inherits the harness's torchvision); resizing the float tensor rather than the 8-bit image also
    keeps bicubic's overshoot past [0, 1] unrounded.  Both matter at 1e-3 relative."""
    from torchvision.transforms import functional as TF

    def transform(image: Image.Image) -> torch.Tensor:
        pixels = TF.to_tensor(image)
        height, width = pixels.shape[1:]
        scale = size / max(width, height)
        new_height, new_width = round(height * scale), round(width * scale)
        if (new_height, new_width) != (height, width):
            pixels = TF.resize(
                pixels, [new_height, new_width], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
            )
        # The package pads only after a resize; an image whose long side is already `size` but is not square
        # reaches its model unpadded and fails there, so padding it here changes no score the package gives.
        pad_w, pad_h = size - new_width, size - new_height
        pixels = TF.pad(pixels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        return TF.normalize(pixels, _OPENAI_MEAN, _OPENAI_STD)

    return transform


class _HPS(OpenClipScorer):
    repo = "xswu/HPSv2"
    multiplier = 100.0
    higher_is_better = True
    preprocessing = 1  # 1: the float tensor resized (the package's order); 0 resized the 8-bit image first

    def image_transform(self, model: torch.nn.Module, default: Callable) -> Callable[[Image.Image], torch.Tensor]:
        size = model.visual.image_size
        return hps_transform(size[0] if isinstance(size, (tuple, list)) else size)


@register_scorer("hpsv2")
class HPSv2(_HPS):
    name = "hpsv2"
    version = "v2.0"
    filename = "HPS_v2_compressed.pt"
    scale = "100*cos (SD1.5 ~27)"
    description = "HPSv2 v2.0: 100 * cosine(image, prompt) of OpenCLIP ViT-H/14 with the HPS v2.0 weights"


@register_scorer("hpsv2.1")
class HPSv21(_HPS):
    name = "hpsv2.1"
    family = "hpsv2"  # same model, same preference data as v2.0: not independent evidence
    version = "v2.1"
    filename = "HPS_v2.1_compressed.pt"
    scale = "100*cos"
    description = "HPSv2 v2.1: 100 * cosine(image, prompt) of OpenCLIP ViT-H/14 with the HPS v2.1 weights"
