"""What flow_grpo's two SD3.5 settings change (docs/methods.md, "flow_grpo's SD3.5 DPO").

- LoRA targets: adapted modules and LoRA parameters at rank 32 on SD3.5 Medium's transformer (its real
  config, built on the meta device: no weights, no download), with ``lora_dual_attention`` False / True.
- T5 length: the toy-flow base's velocity prediction, the same x_t, t and caption, conditioned with 128 and
  with 256 T5 positions (zeros: it has no T5): the relative change ||v_128 - v_256|| / ||v_256||.

Usage: ``python bench/flow_grpo_settings.py``
"""

from __future__ import annotations

import torch


def lora_counts() -> None:
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig

    from bench.train_step import SD35_TRANSFORMER
    from harness.models.families import SD3

    for dual in (False, True):
        with torch.device("meta"):
            transformer = SD3Transformer2DModel(**SD35_TRANSFORMER)
        transformer.add_adapter(LoraConfig(r=32, lora_alpha=64, target_modules=SD3.lora_targets(dual)))
        modules = sum(1 for name, _ in transformer.named_modules() if name.endswith(".lora_A"))
        params = sum(p.numel() for name, p in transformer.named_parameters() if "lora_" in name)
        print(f"lora_dual_attention={dual}: {modules} modules, {params / 1e6:.2f} M LoRA parameters")


@torch.no_grad()
def text_length_shift() -> None:
    from harness.models.loading import load_pipeline
    from harness.plan.locations import resolve_base_model

    pipe = load_pipeline(resolve_base_model("toy-flow"))
    generator = torch.Generator().manual_seed(0)
    size = pipe.transformer.config.sample_size
    x_t = torch.randn((4, pipe.transformer.config.in_channels, size, size), generator=generator)
    captions = ["a red circle on the left", "a blue square at the top", "a green triangle", "a yellow star"]
    for t in (250.0, 500.0, 750.0):
        outputs = {}
        for length in (128, 256):
            hidden, _, pooled, _ = pipe.encode_prompt(
                captions, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=length
            )
            outputs[length] = pipe.transformer(
                x_t, encoder_hidden_states=hidden, pooled_projections=pooled, timestep=torch.full((4,), t)
            ).sample
        shift = (outputs[128] - outputs[256]).norm() / outputs[256].norm()
        print(f"toy-flow, t={t:.0f}: ||v_128 - v_256|| / ||v_256|| = {shift:.4f}")


if __name__ == "__main__":
    lora_counts()
    text_length_shift()
