"""VQAScore (Lin et al. 2024, t2v_metrics): the probability that a vision-language model answers "Yes" to
'Does this figure show "{prompt}"? Please answer Yes or No.' about the image.

What the reference code does (github.com/linzhiqiu/t2v_metrics at 6ecb74f, file
t2v_metrics/models/vqascore_models/qwen2vl_model.py, its Qwen2-VL / Qwen2.5-VL path), and what this module
relies on:

- Models (lines 46-90, 98, 110-131): Qwen2.5-VL 3B / 7B / 32B / 72B Instruct, ``qwen2.5-vl-7b`` by
  default, loaded in bfloat16 with SDPA attention (``Qwen2_5_VLForConditionalGeneration``, chosen because
  "qwen2.5" is in the name), the processor from the same hub repository.
- Question and answer (lines 173-174, 185-186): ``'Does this figure show "{}"? Please answer Yes or No.'``
  with the prompt filled in, answer ``'Yes'``; ``t2v_metrics/score.py:104-106`` passes no other template.
- Text (lines 197-200): one user message, the image first and then the question, rendered by the
  processor's chat template with the generation prompt (Qwen2.5-VL's template adds its default system
  message ``You are a helpful assistant.``).
- Image (lines 155-157 with qwen-vl-utils 0.0.14 ``vision_process.py``: ``smart_resize`` lines 56-81,
  ``fetch_image`` lines 93-141; ``process_vision_info`` called with its default ``image_patch_size=14``,
  lines 201-203): converted to RGB, resized with PIL's default filter (bicubic) so both sides are multiples
  of 28 (14-pixel patches merged 2x2) and the area lies between 4 and 16384 merged patches (3,136 and
  12,845,056 pixels); the processor is then told not to resize again (``do_resize=False``, line 214), so
  it only rescales, normalises and cuts the patches.
- Probability (lines 219-230, 265-289): ``generate`` one token greedily with ``output_scores=True``; the
  score is the softmax (temperature 1) of that step's scores at the first token of ``'Yes'`` (one token for
  Qwen's vocabulary).  ``generate``'s scores are the logits *after* the checkpoint's logits processors: in
  greedy decoding its ``generation_config.json`` ``repetition_penalty`` (when not 1) is applied, every token
  of the prompt made less likely (positive logits divided by it, negative ones multiplied), and this
  module applies it the same way.  The sampling settings of that file (temperature, top-k, top-p) are not
  applied in greedy decoding.

We do one forward pass per batch (left padding, the next-token logits of the last position), not
``generate`` per image; the test compares the two.  Where we differ on purpose:
- t2v_metrics raises an error when the greedy token is the end-of-text or padding token (lines 239-257:
  no token left to score); we return the probability of "Yes" all the same.
- The model class comes from the checkpoint's config (``AutoModelForImageTextToText``), not from
  "qwen2.5" appearing in its name, and ``dtype`` is an option (``auto``: bfloat16 on CUDA as the
  reference, float32 on a CPU).
- The resizing factor is the processor's patch size times its merge size (28 for Qwen2.5-VL, as the
  reference hard-codes it), so Qwen3-VL checkpoints would get their own 32 as t2v_metrics' Qwen3-VL path
  gives them; only the Qwen2.5-VL layout is tested.

Default checkpoint: ``Qwen/Qwen2.5-VL-7B-Instruct``, the reference's default Qwen model and the one its
README reports; transformers >= 4.49 has its classes (5.x here).  Memory: 8.3e9 parameters, 16.6 GB of
bfloat16 weights; ``offload`` keeps them in CPU memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from harness.api.registry import register_scorer
from harness.api.scorer import Scorer, weights_version
from harness.errors import HarnessError
from harness.scoring._loading import (
    flag,
    from_pretrained,
    in_batches,
    pick_device,
    place,
    positive,
    qwen_fitted_size,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
QUESTION = 'Does this figure show "{}"? Please answer Yes or No.'
ANSWER = "Yes"
# qwen-vl-utils' bounds on an image's area, in merged patches (IMAGE_MIN_TOKEN_NUM, IMAGE_MAX_TOKEN_NUM)
MIN_PATCHES, MAX_PATCHES = 4, 16384


def question(prompt: str) -> str:
    """The question asked about an image of ``prompt``."""
    return QUESTION.format(prompt)


def messages(prompt: str) -> list[dict]:
    """The chat the processor's template renders: one user turn, the image, then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question(prompt)}]}]


def fitted_size(width: int, height: int, factor: int = 28) -> tuple[int, int]:
    """(width, height) qwen-vl-utils resizes an image to for 14-pixel patches merged 2x2 (``factor`` 28)."""
    return qwen_fitted_size(
        width,
        height,
        min_pixels=MIN_PATCHES * factor**2,
        max_pixels=MAX_PATCHES * factor**2,
        factor=factor,
        what="vqascore",
    )


def resize_for_vqa(image: Image.Image, factor: int = 28) -> Image.Image:
    """RGB at ``fitted_size``, bicubic (PIL's default filter, which qwen-vl-utils uses)."""
    image = image.convert("RGB")
    size = fitted_size(*image.size, factor=factor)
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def penalized(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, penalty: float):
    """``logits`` [batch, vocab] with every token present in its row's prompt made less likely, as
    ``generate``'s repetition penalty does: positive logits divided by ``penalty``, negative multiplied."""
    import torch

    # Padding positions point at the row's last token (always a real one with left padding): no new token.
    ids = torch.where(attention_mask.bool(), input_ids, input_ids[:, -1:])
    present = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, ids, True)
    return torch.where(present, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


@register_scorer("vqascore")
class VQAScore(Scorer):
    name = "vqascore"
    version = "v1"
    scale = "P(Yes) in [0,1]"
    higher_is_better = True
    description = (
        'VQAScore: P("Yes") of Qwen2.5-VL-7B-Instruct to: Does this figure show "PROMPT"? Please answer Yes or '
        "No. (options: model, batch_size, dtype, offload)"
    )

    def __init__(
        self,
        model: str | Path = MODEL,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 8,
        offload: bool | str = False,
    ) -> None:
        """``model``: hub id or ``save_pretrained`` directory of a Qwen2.5-VL Instruct checkpoint (weights,
        config, ``generation_config.json``, processor with its chat template); ``device``: default the GPU
        when there is one; ``dtype``: auto (bfloat16 on CUDA, float32 elsewhere), bfloat16, float16,
        float32; ``batch_size``: images per forward pass (halved after a GPU out-of-memory error);
        ``offload``: keep the weights in CPU memory, each layer copied to the device when it runs."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = pick_device(device)
        self.dtype = torch_dtype(self.name, str(dtype), self.device)
        self.batch_size = positive(self.name, batch_size, "batch_size")
        offload = flag(self.name, offload, "offload")
        what = f"vqascore model (default {MODEL})"
        # left padding: every row's last position is where the answer's first token is predicted
        self.processor = from_pretrained(AutoProcessor, model, what=what, option="model", padding_side="left")
        if not getattr(self.processor, "chat_template", None):
            raise HarnessError(f"vqascore: the processor of {model} has no chat template; not an Instruct checkpoint")
        images = self.processor.image_processor
        self.factor = images.patch_size * images.merge_size
        self.answer_id = self.processor.tokenizer.encode(ANSWER, add_special_tokens=False)[0]
        self.model = from_pretrained(AutoModelForImageTextToText, model, what=what, option="model", dtype=self.dtype)
        self.penalty = self.model.generation_config.repetition_penalty or 1.0
        place(self.model, self.device, offload)
        self.version = self.version_for(model=model)

    @classmethod
    def version_for(cls, model: str | Path = MODEL, **_: Any) -> str:
        return weights_version(cls.version, {"model": model}, {"model": MODEL})

    def inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, torch.Tensor]:
        """The processor's tensors (left-padded token ids and mask, image patches and grids, token types)."""
        texts = [
            self.processor.apply_chat_template(messages(prompt), tokenize=False, add_generation_prompt=True)
            for prompt in prompts
        ]
        batch = self.processor(
            text=texts,
            images=[resize_for_vqa(image, self.factor) for image in images],
            padding=True,
            do_resize=False,
            return_tensors="pt",
        )
        return {key: value.to(self.device) for key, value in batch.items()}

    def yes_probability(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch] P(first token of "Yes") at the first answer position, after the repetition penalty."""
        logits = self.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        if self.penalty != 1.0:
            logits = penalized(logits, batch["input_ids"], batch["attention_mask"], self.penalty)
        return logits.softmax(dim=-1)[:, self.answer_id]

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        import torch

        outputs = in_batches(
            self,
            len(images),
            lambda start, stop: self.yes_probability(self.inputs(images[start:stop], prompts[start:stop])),
        )
        return torch.cat(outputs).tolist() if outputs else []
