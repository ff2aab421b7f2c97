"""LAION aesthetic predictor v1: a linear head on unit-norm CLIP ViT-L/14 image embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from harness.api.registry import register_scorer
from harness.api.scorer import Scorer, weights_version
from harness.errors import HarnessError
from harness.scoring._hf_clip import image_embeddings, load_clip
from harness.scoring._loading import load_state_dict, pick_device, resolve_file

MODEL = "openai/clip-vit-large-patch14"
# The head is published in the predictor's GitHub repository only, not on the hub.
CHECKPOINT = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth"
HEAD_FILE = "sa_0_4_vit_l_14_linear.pth"


@register_scorer("aesthetic")
class Aesthetic(Scorer):
    name = "aesthetic"
    version = "v1-vit-l-14-linear"
    scale = "LAION aesthetic rating, 1-10 (SD1.5 ~5.9)"
    higher_is_better = True
    description = "LAION aesthetic predictor v1: linear head on normalised CLIP ViT-L/14 image features (prompt unused)"

    def __init__(
        self,
        model: str | Path = MODEL,
        checkpoint: str | Path = CHECKPOINT,
        processor: str | Path | None = None,
        device: str | None = None,
    ) -> None:
        import torch

        self.device = pick_device(device)
        processor = model if processor is None else processor
        self.model, self.processor = load_clip(model, processor, self.device, what="aesthetic CLIP ViT-L/14")
        path = resolve_file(checkpoint, HEAD_FILE, what="aesthetic predictor head", option="checkpoint")
        state = load_state_dict(path, what="aesthetic predictor head")
        weight, bias = state.get("weight"), state.get("bias")
        width = self.model.config.projection_dim
        if weight is None or bias is None or tuple(weight.shape) != (1, width):
            raise HarnessError(
                f"aesthetic predictor head {path}: expected a Linear({width}, 1) state dict (weight, bias)"
            )
        self.head = torch.nn.Linear(width, 1).to(self.device)
        self.head.load_state_dict({"weight": weight, "bias": bias})
        self.version = self.version_for(model=model, checkpoint=checkpoint, processor=processor)

    @classmethod
    def version_for(
        cls,
        model: str | Path = MODEL,
        checkpoint: str | Path = CHECKPOINT,
        processor: str | Path | None = None,
        **_: Any,
    ) -> str:
        return weights_version(
            cls.version,
            {"model": model, "checkpoint": checkpoint, "processor": model if processor is None else processor},
            {"model": MODEL, "checkpoint": CHECKPOINT, "processor": MODEL},
        )

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        with torch.inference_mode():
            features = image_embeddings(self.model, self.processor, images, self.device)
            return self.head(features).squeeze(-1).tolist()
