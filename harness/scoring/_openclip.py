"""OpenCLIP models with a state dict from a file: the base of HPSv2 and the CLIP score."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from harness.api.scorer import Scorer, weights_version
from harness.errors import HarnessError
from harness.scoring._loading import load_state_dict, pick_device, resolve_file

if TYPE_CHECKING:
    import torch

ARCH = "ViT-H-14"


class OpenClipScorer(Scorer):
    """``multiplier * cos(image, prompt)`` of an OpenCLIP model whose weights are one file.

    Subclasses name the published file (``repo`` on the hub, ``filename`` in it) and may replace
    the image preprocessing (``image_transform``).  ``arch`` exists so tests can run the same code
    on a tiny architecture registered with ``open_clip.add_model_config``.
    """

    repo: ClassVar[str]
    filename: ClassVar[str]
    multiplier: ClassVar[float] = 1.0

    def __init__(self, checkpoint: str | Path | None = None, arch: str = ARCH, device: str | None = None) -> None:
        import open_clip

        checkpoint = self.repo if checkpoint is None else checkpoint
        self.device = pick_device(device)
        what = f"{self.name} weights"
        path = resolve_file(checkpoint, self.filename, what=what, option="checkpoint")
        # open_clip warns that a model built without `pretrained` is random; ours is, until the
        # state dict below is loaded (strictly), so that warning would only mislead.
        logging.disable(logging.WARNING)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        except RuntimeError as exc:
            raise HarnessError(f"{self.name}: unknown OpenCLIP architecture {arch!r} ({exc})") from None
        finally:
            logging.disable(logging.NOTSET)
        missing, unexpected = model.load_state_dict(load_state_dict(path, what=what), strict=False)
        if missing or unexpected:
            raise HarnessError(
                f"{what} {path} do not fit OpenCLIP {arch}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.preprocess = self.image_transform(model, preprocess)
        self.version = self.version_for(checkpoint=checkpoint, arch=arch)

    @classmethod
    def version_for(cls, checkpoint: str | Path | None = None, arch: str = ARCH, **_: Any) -> str:
        return weights_version(
            cls.version,
            {"checkpoint": cls.repo if checkpoint is None else checkpoint, "arch": arch},
            {"checkpoint": cls.repo, "arch": ARCH},
            preprocessing=cls.preprocessing,
        )

    def image_transform(self, model: torch.nn.Module, default: Callable) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> normalised tensor; OpenCLIP's own evaluation transform unless overridden."""
        return default

    def _image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """Unit image embeddings (a tensor, one row per image); call under ``torch.inference_mode``."""
        import torch

        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        return self.model.encode_image(pixels, normalize=True).float()

    def embed(self, images: list[Image.Image]) -> list[list[float]]:
        """The unit image embeddings the score compares with the prompt's."""
        import torch

        with torch.inference_mode():
            return self._image_features(images).tolist()

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        with torch.inference_mode():
            image = self._image_features(images)
            tokens = self.tokenizer(prompts).to(self.device)
            text = self.model.encode_text(tokens, normalize=True).float()
            return (self.multiplier * (image * text).sum(dim=-1)).tolist()
