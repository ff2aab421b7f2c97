"""PickScore v1 (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from harness.api.registry import register_scorer
from harness.api.scorer import Scorer, weights_version
from harness.scoring._hf_clip import image_embeddings, load_clip, text_embeddings
from harness.scoring._loading import pick_device

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register_scorer("pickscore")
class PickScore(Scorer):
    name = "pickscore"
    version = "v1"
    scale = "exp(logit_scale)*cos, about 100*cos (SD1.5 ~21)"
    higher_is_better = True
    description = "PickScore v1: exp(logit_scale) * cosine(image, prompt) of a CLIP ViT-H/14 tuned on Pick-a-Pic"

    def __init__(self, model: str | Path = MODEL, processor: str | Path = PROCESSOR, device: str | None = None) -> None:
        self.device = pick_device(device)
        self.model, self.processor = load_clip(model, processor, self.device, what="PickScore model")
        self.version = self.version_for(model=model, processor=processor)

    @classmethod
    def version_for(cls, model: str | Path = MODEL, processor: str | Path = PROCESSOR, **_: Any) -> str:
        return weights_version(
            cls.version, {"model": model, "processor": processor}, {"model": MODEL, "processor": PROCESSOR}
        )

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        with torch.inference_mode():
            image = image_embeddings(self.model, self.processor, images, self.device)
            text = text_embeddings(self.model, self.processor, prompts, self.device)
            return (self.factor() * (image * text).sum(dim=-1)).tolist()

    def factor(self) -> float:
        return float(self.model.logit_scale.exp())


@register_scorer("pickscore-cosine")
class PickScoreCosine(PickScore):
    """The cosine itself, without PickScore's logit scale: what SmPO's preprocessing stores as
    ``ps_score_0`` / ``ps_score_1``, and what its normalisation bounds are written for."""

    name = "pickscore-cosine"
    scale = "raw cosine (PickScore / exp(logit_scale); Pick-a-Pic train within [0.115, 0.282])"
    family = "pickscore"
    description = "PickScore v1's raw cosine(image, prompt): SmPO's pair scores"

    def factor(self) -> float:
        return 1.0
