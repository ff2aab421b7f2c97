"""HPSv3 (Ma et al. 2025, MizzenAI): Qwen2-VL-7B-Instruct with a reward head, trained on HPDv3.

What the official code (github.com/MizzenAI/HPSv3) does, and what this module relies on:

- Model (hpsv3/model/qwen2vl_trainer.py, ``Qwen2VLRewardModelBT``; the released settings are in
  hpsv3/config/HPSv3_7B.yaml: ``rm_head_type: ranknet``, ``output_dim: 2``, ``reward_token:
  special``, ``use_special_tokens: true``): the whole Qwen2-VL (vision tower, merger and the 28-layer
  decoder) followed by ``rm_head``, an MLP hidden -> 1024 -> ReLU -> Dropout -> 16 -> ReLU -> 2 kept in
  float32 (parameter indices 0, 3 and 5).  The head reads the decoder's final (normed) hidden state at
  the one position holding the added token ``<|Reward|>``.  The decoder gets no position ids from the
  reward class, so every token, image tokens included, has plain sequential positions (the same index
  on all three M-RoPE axes), not the 2-D image positions Qwen2-VL's own generation uses.
- Output: two numbers per image; the uncertainty loss of the same file reads them as the mean ``mu``
  and ``log sigma`` of a Gaussian preference score (sigma = exp of the second), and
  hpsv3/inference.py reports index 0 (``mu``) as the score.
- Construction (hpsv3/train.py, ``create_model_and_processor``): config and processor come from the
  base model (``model_name_or_path`` in the yaml: Qwen2-VL-7B-Instruct), the processor pads on the
  right, ``<|Reward|>`` is added to the tokenizer as a special token and the token embeddings are
  resized to the new tokenizer length (so the checkpoint's embedding and ``lm_head`` have
  len(tokenizer) rows); the backbone is cast to bfloat16 and ``rm_head`` back to float32.
- Checkpoint (hpsv3/inference.py): ``HPSv3.safetensors`` in the hub repo MizzenAI/HPSv3, a full
  state dict loaded strictly.  Its keys follow transformers 4.45's module names (``visual.*``,
  ``model.*`` for the decoder, ``lm_head.weight``, ``rm_head.*``); transformers >= 4.52 names the same
  tensors ``model.visual.*`` and ``model.language_model.*``.  Both layouts are accepted here.
- Prompt (hpsv3/dataset/data_collator_qwen.py, used by hpsv3/inference.py): one user message holding
  the image, then the text ``INSTRUCTION`` (with the prompt filled in) followed by the rating request
  ending in ``<|Reward|>``; rendered with the base model's chat template and a generation prompt
  (Qwen2-VL's template adds its default system message).
- Images (hpsv3/inference.py with hpsv3/dataset/utils.py, modified from qwen-vl-utils): converted to
  RGB and resized (PIL, bicubic) so both sides are multiples of 28 and the area is as close as the
  rule allows to 256 * 28 * 28 pixels (min and max pixels both set to that number); the processor
  then adds its own normalisation and 14-pixel patches, 2x2 merged: 256 image tokens for a square.

We use transformers' own ``Qwen2VLModel`` (vision tower + decoder) and write the reward head and
the pooling here; we do not depend on the ``hpsv3`` package, which pins transformers 4.45.2 and
installs deepspeed.

Memory: the published model has 8.29e9 parameters (Qwen2-VL-7B with the vocabulary cut to the
tokenizer plus ``<|Reward|>``); ``lm_head`` (0.54e9 of them) is not needed for the reward and is never
loaded, leaving 7.75e9: 15.5 GB of weights in bfloat16, 31 GB in float32.  ``bench/hpsv3_memory.py``
measures the peak with activations per batch size.  Options: ``batch_size`` (images per forward
pass; on CUDA it is halved after an out-of-memory error), ``dtype`` (``auto``: bfloat16 on CUDA,
float32 on CPU), ``offload`` (weights stay in CPU memory and each layer is copied to the GPU when it
runs, through accelerate's ``cpu_offload``: slow, but needs little GPU memory).

The uncertainty is exposed two ways: ``HPSv3.score_with_uncertainty`` returns (mu, sigma) from one
pass, and the scorer ``hpsv3-sigma`` stores sigma as its own column (a second pass if both are
asked for).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from harness.api.registry import register_scorer
from harness.api.scorer import Scorer, weights_version
from harness.errors import HarnessError
from harness.scoring._loading import (
    _first_line,
    flag,
    from_pretrained,
    in_batches,
    pick_device,
    place,
    positive,
    qwen_fitted_size,
    resolve_file,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

REPO = "MizzenAI/HPSv3"
CHECKPOINT_FILE = "HPSv3.safetensors"
BASE = "Qwen/Qwen2-VL-7B-Instruct"
REWARD_TOKEN = "<|Reward|>"
IMAGE_PIXELS = 256 * 28 * 28  # the area every image is resized to (as near as multiples of 28 allow)
PIXEL_FACTOR = 28  # 14-pixel patches merged 2x2: each side a multiple of 28
HEAD_WIDTHS = (1024, 16, 2)  # hidden -> 1024 -> 16 -> (mu, log sigma)
HEAD_LINEAR_INDICES = (0, 3, 5)  # the Linear layers' places in the official nn.Sequential

# The model was trained on exactly this text (its words, spacing and trailing blanks included):
# it is the model's input format, reproduced as the checkpoint needs it.
INSTRUCTION = (
    "\n"
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall "
    "score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 "
    "being the best. \n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
    "elements (e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of "
    "harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or "
    "adult material. If such content is present, the image quality and satisfaction score should be the lowest "
    "possible. \n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) "
    "align with the textual description. The subject should match the description in terms of number, appearance, "
    "and behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the "
    "image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image "
    "logically fit the scenario described in the prompt. The environment should support and enhance the subject "
    "without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
    "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be "
    "acceptable, but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the "
    "image. The generated content should not introduce elements that conflict with or distort the original "
    "description.\n"
    "Textual prompt - {prompt}\n"
    "\n"
    "\n"
)
RATING_REQUEST = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"
# Qwen2-VL-Instruct's chat template for one user message (an image, then text) with a generation prompt.
_CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def chat_text(prompt: str) -> str:
    """The text the processor gets for one (image, prompt): one ``<|image_pad|>`` that it expands to
    the image's tokens, and one ``<|Reward|>`` whose hidden state is scored."""
    return _CHAT.format(text=INSTRUCTION.replace("{prompt}", prompt) + RATING_REQUEST)


# HPSv3's own rule: both pixel bounds at one area (hpsv3/dataset/utils.py, modified from qwen-vl-utils)
fitted_size = functools.partial(
    qwen_fitted_size, min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS, factor=PIXEL_FACTOR, what="HPSv3"
)


def resize_for_hpsv3(image: Image.Image) -> Image.Image:
    """RGB at ``fitted_size``, bicubic (an image already that size is left as it is)."""
    image = image.convert("RGB")
    size = fitted_size(*image.size)
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def reward_head(hidden_size: int) -> torch.nn.Sequential:
    """The official ``rm_head`` layout: Linear, ReLU, Dropout, Linear, ReLU, Linear."""
    from torch import nn

    wide, narrow, out = HEAD_WIDTHS
    return nn.Sequential(
        nn.Linear(hidden_size, wide),
        nn.ReLU(),
        nn.Dropout(0.05),
        nn.Linear(wide, narrow),
        nn.ReLU(),
        nn.Linear(narrow, out),
    )


def model_key(checkpoint_key: str) -> str | None:
    """Name in ``HPSv3Reward`` of an official checkpoint tensor (either transformers layout), or None
    for ``lm_head.weight``, which the reward does not use."""
    if checkpoint_key == "lm_head.weight":
        return None
    if checkpoint_key.startswith("rm_head."):
        return checkpoint_key
    for old, new in (
        ("model.visual.", "backbone.visual."),
        ("model.language_model.", "backbone.language_model."),
        ("visual.", "backbone.visual."),
        ("model.", "backbone.language_model."),
    ):
        if checkpoint_key.startswith(old):
            return new + checkpoint_key.removeprefix(old)
    return checkpoint_key  # unknown: reported as unexpected by the strict load


@functools.cache
def reward_model_class() -> type:
    """``HPSv3Reward``, defined on first use so that listing scorers does not import torch."""
    import torch
    from torch import nn
    from transformers import Qwen2VLModel

    class HPSv3Reward(nn.Module):
        """Qwen2-VL (vision tower + decoder) and the reward head over the ``<|Reward|>`` position."""

        def __init__(self, config, reward_token_id: int) -> None:
            super().__init__()
            self.backbone = Qwen2VLModel(config)
            self.rm_head = reward_head(config.text_config.hidden_size)
            self.image_token_id = config.image_token_id
            self.reward_token_id = reward_token_id

        def reward_states(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            pixel_values: torch.Tensor,
            image_grid_thw: torch.Tensor,
        ) -> torch.Tensor:
            """[batch, hidden]: the decoder's final hidden state at each sequence's ``<|Reward|>``."""
            embeds = self.backbone.get_input_embeddings()(input_ids)
            visual = self.backbone.visual
            image_embeds = visual(pixel_values.to(visual.dtype), grid_thw=image_grid_thw).pooler_output
            image_slots = input_ids == self.image_token_id
            if int(image_slots.sum()) != image_embeds.shape[0]:
                raise RuntimeError(f"{int(image_slots.sum())} image tokens for {image_embeds.shape[0]} image features")
            embeds = embeds.masked_scatter(image_slots[..., None], image_embeds.to(embeds.dtype))
            # HPSv3's plain sequential positions (see the module docstring); right padding keeps them
            # equal to each sequence's own.
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            hidden = self.backbone.language_model(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False
            ).last_hidden_state
            reward_slots = input_ids == self.reward_token_id
            if not bool((reward_slots.sum(dim=1) == 1).all()):
                raise RuntimeError(f"each sequence needs exactly one {REWARD_TOKEN} token")
            return hidden[reward_slots]

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            pixel_values: torch.Tensor,
            image_grid_thw: torch.Tensor,
        ) -> torch.Tensor:
            """[batch, 2]: (mu, log sigma) per sequence, the head in float32 like the official one."""
            states = self.reward_states(input_ids, attention_mask, pixel_values, image_grid_thw)
            return self.rm_head(states.float())

    return HPSv3Reward


def empty_reward_model(config: Any, reward_token_id: int) -> torch.nn.Module:
    """``HPSv3Reward`` of ``config`` with its parameters on the meta device (no memory, no init)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return reward_model_class()(config, reward_token_id)


def load_reward_model(path: Path, config: Any, reward_token_id: int, dtype: torch.dtype) -> torch.nn.Module:
    """``HPSv3Reward`` with the official checkpoint at ``path`` loaded strictly: every tensor it needs,
    nothing else, each of the right shape; the backbone in ``dtype`` and the head in float32.

    The vocabulary size is the checkpoint's (the base tokenizer plus ``<|Reward|>``), not the base
    config's.  Tensors are read one at a time, so the host holds one copy of the weights.
    """
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = {model_key(key): key for key in f.keys()}
            if names.pop(None, None) is None or "backbone.language_model.embed_tokens.weight" not in names:
                raise HarnessError(
                    f"HPSv3 weights {path}: no lm_head.weight or model.embed_tokens.weight; not an HPSv3 checkpoint"
                )
            config.text_config.vocab_size = f.get_slice(
                names["backbone.language_model.embed_tokens.weight"]
            ).get_shape()[0]
            model = empty_reward_model(config, reward_token_id)
            expected = model.state_dict()
            missing, unexpected = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
            if missing or unexpected:
                raise HarnessError(
                    f"HPSv3 weights {path} do not fit Qwen2-VL (config from the base option) with the "
                    f"HPSv3 head: missing {[official_key(k) for k in missing[:3]]}, "
                    f"unexpected {[names[k] for k in unexpected[:3]]}"
                )
            state = {}
            for name, target in expected.items():
                tensor = f.get_tensor(names[name])
                if tensor.shape != target.shape:
                    raise HarnessError(
                        f"HPSv3 weights {path}: {names[name]} has shape {tuple(tensor.shape)}, "
                        f"the base config gives {tuple(target.shape)}"
                    )
                state[name] = tensor.to(torch.float32 if name.startswith("rm_head.") else dtype)
    except HarnessError:
        raise
    except Exception as exc:  # not a safetensors file, truncated, unreadable
        raise HarnessError(f"HPSv3 weights: cannot read {path} ({_first_line(exc)})") from None
    model.load_state_dict(state, assign=True)
    return model.eval()


def official_key(name: str) -> str:
    """A model tensor's name in the official (transformers 4.45) checkpoint layout, for messages."""
    for new, old in (("backbone.visual.", "visual."), ("backbone.language_model.", "model.")):
        if name.startswith(new):
            return old + name.removeprefix(new)
    return name


@register_scorer("hpsv3")
class HPSv3(Scorer):
    name = "hpsv3"
    version = "v1.0"
    scale = "mu (unbounded)"
    higher_is_better = True
    description = (
        "HPSv3: Qwen2-VL-7B reward model, mean mu of its Gaussian preference score "
        "(options: checkpoint, base, batch_size, dtype, offload)"
    )

    def __init__(
        self,
        checkpoint: str | Path = REPO,
        base: str | Path = BASE,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 8,
        offload: bool | str = False,
    ) -> None:
        from transformers import AutoProcessor, Qwen2VLConfig

        self.device = pick_device(device)
        self.dtype = torch_dtype(self.name, str(dtype), self.device)
        self.batch_size = positive(self.name, batch_size, "batch_size")
        offload = flag(self.name, offload, "offload")
        path = resolve_file(checkpoint, CHECKPOINT_FILE, what="HPSv3 weights", option="checkpoint")
        what = f"HPSv3 base model ({BASE}: its config and processor)"
        self.processor = from_pretrained(AutoProcessor, base, what=what, option="base", padding_side="right")
        self.processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        reward_token_id = self.processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        config = from_pretrained(Qwen2VLConfig, base, what=what, option="base")
        self.model = load_reward_model(path, config, reward_token_id, self.dtype)
        place(self.model, self.device, offload)
        self.version = self.version_for(checkpoint=checkpoint, base=base)

    @classmethod
    def version_for(cls, checkpoint: str | Path = REPO, base: str | Path = BASE, **_: Any) -> str:
        return weights_version(
            cls.version, {"checkpoint": checkpoint, "base": base}, {"checkpoint": REPO, "base": BASE}
        )

    def inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, torch.Tensor]:
        """The model's input tensors (right-padded token ids, mask, image patches and grids) on the device."""
        batch = self.processor(
            text=[chat_text(prompt) for prompt in prompts],
            images=[resize_for_hpsv3(image) for image in images],
            padding=True,
            return_tensors="pt",
        )
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        return {key: batch[key].to(self.device) for key in keys}

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return self.score_with_uncertainty(images, prompts)[0]

    def score_with_uncertainty(self, images: list[Image.Image], prompts: list[str]) -> tuple[list[float], list[float]]:
        """(mu, sigma) per (image, prompt): the mean of HPSv3's Gaussian score and its standard deviation."""
        import torch

        outputs = in_batches(
            self, len(images), lambda start, stop: self.model(**self.inputs(images[start:stop], prompts[start:stop]))
        )
        logits = torch.cat(outputs) if outputs else torch.zeros(0, 2)
        return logits[:, 0].tolist(), logits[:, 1].exp().tolist()


@register_scorer("hpsv3-sigma")
class HPSv3Sigma(HPSv3):
    name = "hpsv3-sigma"
    family = "hpsv3"  # the same model's other output: not independent evidence
    scale = "sigma (>0)"
    higher_is_better = False  # a smaller sigma: the model is surer of its score
    description = "HPSv3's uncertainty: sigma of its Gaussian preference score (same options as hpsv3)"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return self.score_with_uncertainty(images, prompts)[1]
