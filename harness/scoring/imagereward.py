"""ImageReward v1.0 (Xu et al. 2023) on transformers' BLIP classes, loading the official checkpoint.

The model: a BLIP ViT encodes the image; a BERT with cross-attention to the image patches reads
the prompt (truncated to 35 tokens); an MLP maps the [CLS] state to a reward, z-normalised
with the training set's mean and std.  ``ImageReward.pt`` (the original ``state_dict`` layout
of the ``image-reward`` package) is loaded unchanged: its keys are mapped onto
``BlipVisionModel`` / ``BlipTextModel``, whose text layout is BLIP's own.  We do not depend on
the ``image-reward`` package: it imports OpenAI ``clip`` (needs ``pkg_resources``), an old timm
and transformers internals, and fails to import with transformers 5.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from harness.api.registry import register_scorer
from harness.api.scorer import Scorer, weights_version
from harness.errors import HarnessError
from harness.scoring._loading import from_pretrained, load_state_dict, pick_device, resolve_file

if TYPE_CHECKING:
    import torch

REPO = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
TOKENIZER = "bert-base-uncased"
MAX_PROMPT_TOKENS = 35
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
# BLIP's ViTs (base and large) use 64-dimensional attention heads; the checkpoint's shapes give
# everything else about the image encoder.
VISION_HEAD_DIM = 64
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Original key (after the "blip.visual_encoder." prefix) -> BlipVisionModel key.
_VISION_KEYS = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def split_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """(vision, text, head) state dicts in transformers' / our layout from the original one.

    Keys BLIP keeps for other tasks (projections, ITM head) and the text ``position_ids``
    buffer are not needed for the reward and are dropped.
    """
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, replacement in _VISION_KEYS:
                if re.search(pattern, name):
                    vision[re.sub(pattern, replacement, name)] = value
                    break
            else:
                raise HarnessError(f"ImageReward checkpoint: unexpected image-encoder key {key!r}")
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            head[key.removeprefix("mlp.layers.")] = value
    return vision, text, head


def vision_config(vision_state: dict[str, torch.Tensor]):
    """BlipVisionConfig of the checkpoint's image encoder, read off its tensor shapes."""
    from transformers import BlipVisionConfig

    try:
        hidden, _, patch, _ = vision_state["embeddings.patch_embedding.weight"].shape
        positions = vision_state["embeddings.position_embedding"].shape[1]
        intermediate = vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise HarnessError(f"ImageReward checkpoint lacks the image-encoder tensor {exc}") from None
    layers = sum(1 for key in vision_state if key.endswith("layer_norm1.weight"))
    grid = round((positions - 1) ** 0.5)
    return BlipVisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // VISION_HEAD_DIM),
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )


def text_config(med_config: dict, encoder_width: int):
    """BlipTextConfig from BLIP's ``med_config.json`` (a BERT config with cross-attention)."""
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=med_config["vocab_size"],
        hidden_size=med_config["hidden_size"],
        intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        encoder_hidden_size=encoder_width,
        # is_decoder builds the cross-attention layers; forward() still attends bidirectionally.
        is_decoder=True,
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def reward_head(width: int) -> torch.nn.Sequential:
    """ImageReward's MLP: five linear layers with no activation between them (as published);
    the dropouts keep the original parameter indices (mlp.layers.0, 2, 4, 6, 7)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(width, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], part: str, path: Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise HarnessError(
            f"ImageReward checkpoint {path}: {part} does not fit (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def _med_config(checkpoint: str | Path, med_config: str | Path | None) -> str | Path:
    """Where med_config.json is: given, or next to ImageReward.pt (on the hub and in a downloaded copy)."""
    if med_config is not None:
        return med_config
    return Path(checkpoint).parent if Path(checkpoint).is_file() else checkpoint


@register_scorer("imagereward")
class ImageReward(Scorer):
    name = "imagereward"
    version = "v1.0"
    scale = "z-normalised reward (SD1.5 ~0.18)"
    higher_is_better = True
    description = "ImageReward v1.0: BLIP image-text reward, prompt truncated to 35 tokens, z-normalised"

    def __init__(
        self,
        checkpoint: str | Path = REPO,
        med_config: str | Path | None = None,
        tokenizer: str | Path = TOKENIZER,
        device: str | None = None,
    ) -> None:
        from torchvision import transforms as T
        from transformers import BertTokenizer, BlipTextModel, BlipVisionModel

        self.device = pick_device(device)
        med_config = _med_config(checkpoint, med_config)
        path = resolve_file(checkpoint, CHECKPOINT_FILE, what="ImageReward weights", option="checkpoint")
        config_path = resolve_file(med_config, MED_CONFIG_FILE, what="ImageReward text config", option="med_config")
        vision_state, text_state, head_state = split_checkpoint(load_state_dict(path, what="ImageReward weights"))
        vision_cfg = vision_config(vision_state)
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(
            text_config(json.loads(config_path.read_text()), vision_cfg.hidden_size), add_pooling_layer=False
        )
        self.head = reward_head(self.text.config.hidden_size)
        for module, state, part in (
            (self.vision, vision_state, "image encoder"),
            (self.text, text_state, "text encoder"),
            (self.head, head_state, "reward head"),
        ):
            _load_strict(module, state, part, path)
            module.eval().to(self.device)
        self.tokenizer = from_pretrained(
            BertTokenizer, tokenizer, what="ImageReward tokenizer (bert-base-uncased)", option="tokenizer"
        )
        size = vision_cfg.image_size
        self.preprocess = T.Compose(
            [
                T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize(_CLIP_MEAN, _CLIP_STD),
            ]
        )
        self.version = self.version_for(checkpoint=checkpoint, med_config=med_config, tokenizer=tokenizer)

    @classmethod
    def version_for(
        cls,
        checkpoint: str | Path = REPO,
        med_config: str | Path | None = None,
        tokenizer: str | Path = TOKENIZER,
        **_: Any,
    ) -> str:
        return weights_version(
            cls.version,
            {"checkpoint": checkpoint, "med_config": _med_config(checkpoint, med_config), "tokenizer": tokenizer},
            {"checkpoint": REPO, "med_config": REPO, "tokenizer": TOKENIZER},
        )

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        with torch.inference_mode():
            return self._rewards(images, prompts).tolist()

    def _rewards(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        import torch

        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        )
        image_states = self.vision(pixel_values=pixels).last_hidden_state
        text_states = self.text(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
            encoder_hidden_states=image_states,
            encoder_attention_mask=torch.ones(image_states.shape[:-1], dtype=torch.long, device=self.device),
        ).last_hidden_state
        reward = self.head(text_states[:, 0].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD
