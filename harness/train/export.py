"""Write a trained network as users load it: ``<its family's denoiser class>.from_pretrained(dir)``
(``UNet2DConditionModel``, SD3's ``SD3Transformer2DModel``).

With LoRA the adapters are merged into the base weights (W + alpha/r * B A) so the
exported UNet is a plain diffusers UNet; the adapters alone are also written next
to it (``../lora``, diffusers LoRA format) for ``pipe.load_lora_weights``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from harness.atomic import staging
from harness.models.families import ModelFamily


def _merged_state(unet: torch.nn.Module, overrides: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu().float() for k, v in unet.state_dict().items()}
    state.update({k: v.detach().cpu().float() for k, v in overrides.items()})
    config = getattr(unet, "peft_config", {}).get("default")
    if config is None:
        return state
    scaling = config.lora_alpha / config.r
    merged = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            prefix, leaf = key.split(".base_layer.")
            if leaf == "weight":
                down = state[f"{prefix}.lora_A.default.weight"]
                up = state[f"{prefix}.lora_B.default.weight"]
                value = value + scaling * (up.flatten(1) @ down.flatten(1)).view_as(value)
            key = f"{prefix}.{leaf}"
        merged[key] = value
    return merged


def export_unet(
    unet: torch.nn.Module, out_dir: Path, family: ModelFamily, ema: dict[str, torch.Tensor] | None = None
) -> Path:
    """Save ``unet`` (a network of ``family``; its EMA weights when given, LoRA merged) atomically in diffusers
    format, its LoRA adapters alone in ``../lora``."""
    plain = type(unet).from_config(unet.config)
    plain.load_state_dict(_merged_state(unet, ema or {}))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with staging(out_dir, tmp):
        plain.save_pretrained(tmp)
    if getattr(unet, "peft_config", None):
        from peft.utils import get_peft_model_state_dict

        lora_state = get_peft_model_state_dict(unet)
        if ema:
            lora_state = {k: ema.get(k.replace(".weight", ".default.weight"), v) for k, v in lora_state.items()}
        # The adapters' config (alpha above all: the scale alpha / r) goes with them, so that
        # `load_lora_weights` (`harness evaluate --lora`) adds what the merged UNet has.
        family.save_lora(out_dir.parent / "lora", lora_state, unet.peft_config["default"].to_dict())
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir
