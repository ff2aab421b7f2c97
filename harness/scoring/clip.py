"""CLIP score: plain cosine between image and prompt with OpenCLIP ViT-H/14 (LAION-2B)."""

from __future__ import annotations

from harness.api.registry import register_scorer
from harness.scoring._openclip import OpenClipScorer


@register_scorer("clip")
class ClipScore(OpenClipScorer):
    name = "clip"
    version = "ViT-H-14-laion2B-s32B-b79K"
    scale = "cos in [-1, 1] (SD1.5 ~0.34)"
    higher_is_better = True
    description = "CLIP score: cosine(image, prompt) of OpenCLIP ViT-H/14 trained on LAION-2B"
    repo = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    filename = "open_clip_pytorch_model.bin"
    multiplier = 1.0
