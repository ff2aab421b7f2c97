"""ImageReward: a tiny checkpoint in the original ``ImageReward.pt`` layout, loaded through the real
code path and compared with a forward pass written here directly over the original keys
(the published architecture: BLIP ViT, BERT with cross-attention, linear MLP, z-score), on
images at the model's size and at others, preprocessed as the published code does."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.errors import HarnessError
from harness.scoring import get_scorer
from harness.testing.scorer_weights import IMAGEREWARD_SHAPES, imagereward_state_dict, save_imagereward
from support.scorer_images import CLIP_MEAN, CLIP_STD, odd_sized_images, shortest_side_and_centre_crop

SHAPE = IMAGEREWARD_SHAPES["tiny"]
SIZE, PATCH, VOCAB = SHAPE.image_size, SHAPE.patch_size, list(SHAPE.vocab)
WORDS = VOCAB[5:]
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the published z-normalisation


def model_input(images: list[Image.Image]) -> torch.Tensor:
    """The published ImageReward preprocessing (OpenAI CLIP's): bicubic resize of the shortest side,
    centre crop, CLIP normalisation; not BLIP's square resize, which would squash the image."""
    arrays = [
        (np.asarray(shortest_side_and_centre_crop(im, SIZE), dtype=np.float64) / 255 - CLIP_MEAN) / CLIP_STD
        for im in images
    ]
    return torch.tensor(np.stack(arrays), dtype=torch.float32).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_imagereward(tmp_path_factory.mktemp("imagereward"), "tiny")


# ---------------------------------------------------------------- the reference: the published model, written out


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def reference_reward(
    sd: dict[str, torch.Tensor], pixels: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """BLIP ViT (pre-norm, eps 1e-6) -> BERT with cross-attention (post-norm) -> MLP -> z-score."""

    def lin(x, name):
        return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def ln(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    v = "blip.visual_encoder"
    x = F.conv2d(pixels, sd[f"{v}.patch_embed.proj.weight"], sd[f"{v}.patch_embed.proj.bias"], stride=PATCH)
    x = (
        torch.cat([sd[f"{v}.cls_token"].expand(len(pixels), -1, -1), x.flatten(2).transpose(1, 2)], 1)
        + sd[f"{v}.pos_embed"]
    )
    for i in range(SHAPE.vision.layers):
        b = f"{v}.blocks.{i}"
        q, k, val = lin(ln(x, f"{b}.norm1", 1e-6), f"{b}.attn.qkv").chunk(3, dim=-1)
        x = x + lin(attention(q, k, val, SHAPE.vision.heads), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{b}.norm2", 1e-6), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    image = ln(x, f"{v}.norm", 1e-6)

    t = "blip.text_encoder"
    h = (
        sd[f"{t}.embeddings.word_embeddings.weight"][ids]
        + sd[f"{t}.embeddings.position_embeddings.weight"][: ids.shape[1]]
    )
    h = ln(h, f"{t}.embeddings.LayerNorm", 1e-12)
    for i in range(SHAPE.text.layers):
        b = f"{t}.encoder.layer.{i}"
        for part, mask in (("attention", keep), ("crossattention", None)):
            src = h if part == "attention" else image
            a = attention(
                lin(h, f"{b}.{part}.self.query"),
                lin(src, f"{b}.{part}.self.key"),
                lin(src, f"{b}.{part}.self.value"),
                SHAPE.text.heads,
                mask,
            )
            h = ln(h + lin(a, f"{b}.{part}.output.dense"), f"{b}.{part}.output.LayerNorm", 1e-12)
        h = ln(h + lin(F.gelu(lin(h, f"{b}.intermediate.dense")), f"{b}.output.dense"), f"{b}.output.LayerNorm", 1e-12)
    r = h[:, 0]
    for index in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{index}")
    return (r.squeeze(-1) - MEAN) / STD


def token_ids(prompt: str) -> list[int]:
    """[CLS] words [SEP], cut to 35 tokens, then [PAD] up to 35: ImageReward's text input."""
    ids = [VOCAB.index("[CLS]")] + [VOCAB.index(word) for word in prompt.split()][:33] + [VOCAB.index("[SEP]")]
    return ids + [VOCAB.index("[PAD]")] * (35 - len(ids))


def test_official_layout_loads_and_matches_the_direct_computation(checkpoint_dir):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(3)]
    images += odd_sized_images(seed=3)
    long_prompt = " ".join(WORDS * 4)  # 60 words: the reward must only see the first 33 plus [CLS] and [SEP]
    prompts = ["a red cube on the table", "two dogs playing in the snow", long_prompt]
    prompts += [prompts[i % 2] for i in range(len(images) - 3)]
    scorer = get_scorer(
        "imagereward",
        checkpoint=str(checkpoint_dir / "ImageReward.pt"),
        tokenizer=str(checkpoint_dir / "tokenizer"),
        device="cpu",
    )

    ids = torch.tensor([token_ids(p) for p in prompts])
    with torch.no_grad():
        expected = reference_reward(
            imagereward_state_dict("tiny"), model_input(images), ids, ids != VOCAB.index("[PAD]")
        )
    scores = scorer.score(images, prompts)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert np.std(scores) > 1e-3  # the tiny model is not degenerate: the comparison means something
    # Truncation at 35 tokens: anything after the 33rd word changes nothing.
    assert scorer.score(images[2:3], [long_prompt + " snow snow snow"]) == pytest.approx(scores[2:3], abs=1e-5)
    assert scorer.version.startswith("v1.0+custom-")
    # known without building it (its med_config found next to the file), as a run reads the score cache
    locations = {"checkpoint": str(checkpoint_dir / "ImageReward.pt"), "tokenizer": str(checkpoint_dir / "tokenizer")}
    assert type(scorer).version_for(**locations, device="cpu") == scorer.version


def test_med_config_is_found_next_to_the_checkpoint_and_missing_parts_are_named(checkpoint_dir, tmp_path):
    scorer = get_scorer("imagereward", checkpoint=str(checkpoint_dir), tokenizer=str(checkpoint_dir / "tokenizer"))
    assert scorer.vision.config.image_size == SIZE and scorer.vision.config.num_attention_heads == 2
    assert type(scorer).version_for(checkpoint=str(checkpoint_dir), tokenizer=str(checkpoint_dir / "tokenizer")) == (
        scorer.version
    )

    state = imagereward_state_dict("tiny")
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    torch.save(state, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text((checkpoint_dir / "med_config.json").read_text())
    with pytest.raises(
        HarnessError, match=r"text encoder does not fit .*encoder.layer.1.crossattention.self.key.weight"
    ):
        get_scorer("imagereward", checkpoint=str(tmp_path), tokenizer=str(checkpoint_dir / "tokenizer"))
    (tmp_path / "med_config.json").unlink()
    with pytest.raises(HarnessError, match=r"has no med_config\.json"):
        get_scorer("imagereward", checkpoint=str(tmp_path), tokenizer=str(checkpoint_dir / "tokenizer"))
