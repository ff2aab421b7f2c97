"""HPSv3: a tiny random Qwen2-VL reward model in the official ``HPSv3.safetensors`` layout, loaded through
the real code path, against what the official code does: its prompt and image sizes, and its score
computed here by hand (transformers' Qwen2VLModel with HPSv3's sequential positions, then the head's
three linear layers at the ``<|Reward|>`` position)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from harness.cli import main
from harness.errors import HarnessError
from harness.evaluation.evaluate import check_scorer_options
from harness.scoring import LazyScorer, get_scorer, same_signal
from harness.scoring.hpsv3 import chat_text, fitted_size

PROMPTS = ["a cat", "two dogs playing in the snow, oil painting", "x"]


def picture(width: int, height: int, seed: int) -> Image.Image:
    """Smooth random colours: structure everywhere, so resizing and patching matter."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [picture(512, 512, 0), picture(300, 700, 1), picture(1024, 576, 2)]


@pytest.fixture(scope="module")
def scorer(hpsv3_locations):
    return LazyScorer("hpsv3", device="cpu", **hpsv3_locations).loaded()  # its version known before it was built


@pytest.fixture(scope="module")
def checkpoint_state(hpsv3_locations) -> dict[str, torch.Tensor]:
    return load_file(Path(hpsv3_locations["checkpoint"]) / "HPSv3.safetensors")


# ------------------------------------------- preprocessing (the official files: harness/scoring/hpsv3.py)


@pytest.mark.parametrize(
    ("size", "resized"),
    [
        ((512, 512), (448, 448)),  # 256 * 28 * 28 pixels exactly: 16 x 16 merged tokens
        ((64, 64), (448, 448)),  # small images are scaled up to the same area
        ((300, 700), (280, 672)),  # rounded sides give 308 x 700, too many pixels: scaled down, floored to 28s
        ((1024, 576), (588, 336)),
    ],
)
def test_images_are_resized_to_about_256_merged_patches(size, resized):
    assert fitted_size(*size) == resized
    width, height = resized
    assert width % 28 == 0 and height % 28 == 0 and width * height <= 256 * 28 * 28


def test_the_model_reads_the_official_prompt_and_one_token_per_merged_patch(scorer, images):
    batch = scorer.inputs(images[:2], PROMPTS[:2])
    assert batch["image_grid_thw"].tolist() == [[1, 32, 32], [1, 48, 20]]  # 448x448 and 280x672 in 14-px patches
    tokenizer = scorer.processor.tokenizer
    image_token, reward_token = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|Reward|>"])
    assert (batch["input_ids"] == image_token).sum(dim=1).tolist() == [256, 240]
    assert (batch["input_ids"] == reward_token).sum(dim=1).tolist() == [1, 1]

    # Right padding: the longer prompt fills its row; the other ends in <|endoftext|> with a zero mask.
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    first = batch["input_ids"][0, : lengths[0]]
    assert batch["attention_mask"][0, lengths[0] :].sum() == 0
    assert (batch["input_ids"][0, lengths[0] :] == tokenizer.pad_token_id).all()

    text = tokenizer.decode(first, skip_special_tokens=False)
    head = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>" + "<|image_pad|>" * 256 + "<|vision_end|>\n"
        "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a "
        "overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the "
        "worst and 10 being the best. \n\n**Visual Quality:**  \n"
    )
    tail = (
        "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in "
        "the image. The generated content should not introduce elements that conflict with or distort the original "
        "description.\nTextual prompt - a cat\n\n\n\nPlease provide the overall ratings of this image: <|Reward|>"
        "\n\nEND\n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text.startswith(head) and text.endswith(tail)
    assert "\n\n**Text Alignment:**  \nAssess how well the image matches the textual prompt" in text
    assert text == chat_text("a cat").replace("<|image_pad|>", "<|image_pad|>" * 256)
    # system (2 lines), user, the image line, 20 lines of instruction (two sections, blank lines between),
    # 4 of the rating request, the closing and the assistant's turn
    assert len(chat_text("a cat").splitlines()) == 30


# ------------------------------------------------------------------ the score, computed by hand


def reference(state: dict[str, torch.Tensor], base: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[batch, 2] (mu, log sigma) of HPSv3 with transformers' Qwen2VLModel run directly on the checkpoint's
    tensors (``"hpsv3"``), and what other choices would give: the last real token pooled instead of
    ``<|Reward|>`` (``"last token"``), Qwen2-VL's own 2-D image positions (``"m-rope"``)."""
    from transformers import Qwen2VLConfig, Qwen2VLModel

    config = Qwen2VLConfig.from_pretrained(base)
    config.text_config.vocab_size = state["model.embed_tokens.weight"].shape[0]
    model = Qwen2VLModel(config).eval()
    backbone = {
        ("language_model." + key.removeprefix("model.") if key.startswith("model.") else key): value.float()
        for key, value in state.items()
        if not key.startswith(("rm_head.", "lm_head."))
    }
    model.load_state_dict(backbone, strict=True)

    def head(states: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.linear(states.float(), state["rm_head.0.weight"], state["rm_head.0.bias"]))
        x = F.relu(F.linear(x, state["rm_head.3.weight"], state["rm_head.3.bias"]))
        return F.linear(x, state["rm_head.5.weight"], state["rm_head.5.bias"])

    ids = batch["input_ids"]
    reward = ids == config.text_config.vocab_size - 1  # <|Reward|> is the last token of the vocabulary
    last = batch["attention_mask"].sum(dim=1) - 1
    with torch.no_grad():
        # HPSv3: one running index, the same on the three M-RoPE axes
        hidden = model(**batch, position_ids=torch.arange(ids.shape[1]).expand(3, *ids.shape)).last_hidden_state
        # transformers computes Qwen2-VL's image positions from where the image tokens are
        mrope = model(**batch, mm_token_type_ids=(ids == config.image_token_id).int()).last_hidden_state
    return {
        "hpsv3": head(hidden[reward]),
        "last token": head(hidden[torch.arange(len(ids)), last]),
        "m-rope": head(mrope[reward]),
    }


def test_score_is_the_head_over_the_reward_token_and_sigma_its_exp_log_sigma(
    scorer, images, checkpoint_state, hpsv3_locations
):
    outputs = reference(checkpoint_state, hpsv3_locations["base"], scorer.inputs(images, PROMPTS))
    mu, sigma = scorer.score_with_uncertainty(images, PROMPTS)
    np.testing.assert_allclose(mu, outputs["hpsv3"][:, 0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sigma, outputs["hpsv3"][:, 1].exp().numpy(), rtol=1e-4)
    assert scorer.score(images, PROMPTS) == pytest.approx(mu, abs=1e-5)
    assert np.ptp(mu) > 1e-3  # the tiny model tells the inputs apart: the comparison means something
    for wrong in ("last token", "m-rope"):  # the comparison would catch either mistake
        assert np.abs(outputs[wrong][:, 0].numpy() - np.array(mu)).max() > 1e-3, wrong


def test_batches_score_like_single_images(scorer, hpsv3_locations, images):
    # Two images of different sizes and prompts of different lengths: the batch pads one of them.
    one_by_one = get_scorer("hpsv3", device="cpu", batch_size="1", **hpsv3_locations)  # as --scorer-option gives it
    np.testing.assert_allclose(
        scorer.score(images[1:], PROMPTS[1:]), one_by_one.score(images[1:], PROMPTS[1:]), rtol=1e-4, atol=1e-4
    )


def test_cpu_offload_scores_the_same(scorer, hpsv3_locations, images):
    offloaded = get_scorer("hpsv3", device="cpu", offload="true", **hpsv3_locations)
    assert offloaded.score(images[:1], PROMPTS[:1]) == pytest.approx(scorer.score(images[:1], PROMPTS[:1]), abs=1e-4)


def test_sigma_scorer_reports_the_uncertainty(scorer, hpsv3_locations, images):
    sigma_scorer = LazyScorer("hpsv3-sigma", device="cpu", **hpsv3_locations).loaded()
    assert sigma_scorer.score(images[:1], PROMPTS[:1]) == pytest.approx(
        scorer.score_with_uncertainty(images[:1], PROMPTS[:1])[1], rel=1e-5
    )
    assert not sigma_scorer.higher_is_better and sigma_scorer.scale == "sigma (>0)"
    assert same_signal("hpsv3") == ["hpsv3", "hpsv3-official", "hpsv3-sigma"]  # the official package: one signal


# ------------------------------------------------------------------ checkpoints and options


def test_the_newer_transformers_key_layout_loads_the_same_model(
    scorer, checkpoint_state, hpsv3_locations, images, tmp_path
):
    renamed = {
        (
            "model.language_model." + key.removeprefix("model.")
            if key.startswith("model.")
            else "model." + key
            if key.startswith("visual.")
            else key
        ): value
        for key, value in checkpoint_state.items()
    }
    assert "model.visual.merger.mlp.0.weight" in renamed and "model.language_model.norm.weight" in renamed
    save_file(renamed, str(tmp_path / "HPSv3.safetensors"))
    newer = get_scorer("hpsv3", device="cpu", checkpoint=str(tmp_path), base=hpsv3_locations["base"])
    assert newer.score(images[:1], PROMPTS[:1]) == pytest.approx(scorer.score(images[:1], PROMPTS[:1]), abs=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", r"missing \['model\.layers\.1\.mlp\.down_proj\.weight'\]"),
        ("extra", r"unexpected \['model\.layers\.2\.mlp\.down_proj\.weight'\]"),
        ("shape", r"rm_head\.5\.weight has shape \(3, 16\), the base config gives \(2, 16\)"),
        ("garbage", r"cannot read .*HPSv3\.safetensors"),
    ],
)
def test_a_broken_checkpoint_is_a_one_line_error(checkpoint_state, hpsv3_locations, tmp_path, change, message):
    state = dict(checkpoint_state)
    if change == "drop":
        del state["model.layers.1.mlp.down_proj.weight"]
    elif change == "extra":
        state["model.layers.2.mlp.down_proj.weight"] = state["model.layers.1.mlp.down_proj.weight"].clone()
    elif change == "shape":
        state["rm_head.5.weight"] = torch.zeros(3, 16)
    if change == "garbage":
        (tmp_path / "HPSv3.safetensors").write_bytes(b"not a safetensors file")
    else:
        save_file(state, str(tmp_path / "HPSv3.safetensors"))
    with pytest.raises(HarnessError, match=message) as error:
        get_scorer("hpsv3", device="cpu", checkpoint=str(tmp_path), base=hpsv3_locations["base"])
    assert "\n" not in str(error.value)


def test_missing_files_and_bad_options_are_one_line_errors(hpsv3_locations, tmp_path):
    with pytest.raises(HarnessError, match=r"has no HPSv3\.safetensors"):
        get_scorer("hpsv3", checkpoint=str(tmp_path), base=hpsv3_locations["base"])
    with pytest.raises(HarnessError, match=r"no such directory .* pass base=DIR"):
        get_scorer("hpsv3", checkpoint=hpsv3_locations["checkpoint"], base=str(tmp_path / "nowhere"))
    for option, value, message in (
        ("batch_size", "0", "positive whole number"),
        ("dtype", "int8", "dtype must be"),
        ("offload", "maybe", "true or false"),
    ):
        with pytest.raises(HarnessError, match=message):
            get_scorer("hpsv3", device="cpu", **hpsv3_locations, **{option: value})


def test_registered_with_version_scale_and_options(scorer, capsys):
    assert scorer.version.startswith("v1.0+custom-")  # not the published weights: never the published key
    assert scorer.scale == "mu (unbounded)" and scorer.higher_is_better
    check_scorer_options(
        "hpsv3",
        {
            "checkpoint": "DIR",
            "base": "DIR",
            "batch_size": "4",
            "dtype": "bfloat16",
            "offload": "true",
            "device": "cuda",
        },
    )
    with pytest.raises(HarnessError, match="takes no option model"):
        check_scorer_options("hpsv3", {"model": "DIR"})
    assert main(["scorers"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()} >= {"hpsv3", "hpsv3-sigma"}
