"""VQAScore: a tiny random Qwen2.5-VL Instruct checkpoint in the hub repository's layout, loaded through the
real code path, against t2v_metrics' own steps run here with transformers (its Qwen2-VL path,
t2v_metrics/models/vqascore_models/qwen2vl_model.py at 6ecb74f, lines 185-289): one image at a time, the
chat template, the image resized as qwen-vl-utils does and then not resized by the processor, ``generate``
one greedy token with ``output_scores``, the softmax of that step's scores at "Yes".  t2v_metrics itself
cannot be installed here (it needs pytorchvideo from GitHub, decord, and pins of its own).

The resized sizes below were checked against qwen-vl-utils 0.0.14 (``smart_resize`` with factor 28,
4..16384 merged patches, and ``fetch_image``'s pixels, byte for byte) when this test was written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import HarnessError
from harness.evaluation.evaluate import check_scorer_options
from harness.scoring import LazyScorer, get_scorer, same_signal
from harness.scoring.vqascore import fitted_size
from support.cli import harness_main

PROMPTS = ["a red cube on a table", "two dogs playing in the snow, oil painting", "x"]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    coarse = [rng.integers(0, 256, (5, 4, 3), dtype=np.uint8) for _ in range(3)]
    # smooth random colours at sizes that are resized up, not at all, and to another shape
    sizes = ((64, 80), (56, 56), (90, 40))
    return [Image.fromarray(c).resize(size, Image.Resampling.BILINEAR) for c, size in zip(coarse, sizes)]


@pytest.fixture(scope="module")
def scorer(vqascore_locations):
    return LazyScorer("vqascore", device="cpu", **vqascore_locations).loaded()  # its version known before it was built


@pytest.mark.parametrize(
    ("size", "resized"),
    [
        ((64, 80), (56, 84)),
        ((32, 32), (56, 56)),  # below 4 merged patches: scaled up
        ((300, 700), (308, 700)),
        ((1024, 576), (1036, 588)),
        ((5000, 3000), (4620, 2772)),  # above 16384 merged patches: scaled down
        ((20, 3000), (28, 2996)),
        ((90, 40), (84, 56)),  # rounded down to 84x28, too few pixels: scaled up from the original size
    ],
)
def test_images_are_resized_as_qwen_vl_utils_does(size, resized):
    assert fitted_size(*size) == resized


def test_the_model_reads_the_question_in_qwens_chat_format(scorer, images):
    batch = scorer.inputs(images[:2], PROMPTS[:2])
    assert batch["image_grid_thw"].tolist() == [[1, 6, 4], [1, 4, 4]]  # 56x84 and 56x56 in 14-pixel patches
    tokenizer = scorer.processor.tokenizer
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert batch["attention_mask"][0, -lengths[0] :].all() and not batch["attention_mask"][0, : -lengths[0]].any()
    text = tokenizer.decode(batch["input_ids"][0, -lengths[0] :], skip_special_tokens=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>"
        'Does this figure show "a red cube on a table"? Please answer Yes or No.<|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert tokenizer.encode("Yes", add_special_tokens=False) == [scorer.answer_id]  # one token, as in Qwen's


def t2v_metrics_reference(model_dir: str, images: list[Image.Image], prompts: list[str]) -> dict[str, list[float]]:
    """P("Yes") as t2v_metrics computes it (``"t2v"``) and without the checkpoint's repetition penalty
    (``"raw"``: softmax of the unprocessed logits), one image at a time."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    resized = {(64, 80): (56, 84), (56, 56): (56, 56), (90, 40): (84, 56)}  # qwen-vl-utils' sizes
    special = {processor.tokenizer.eos_token_id, processor.tokenizer.bos_token_id, processor.tokenizer.pad_token_id}
    result = {"t2v": [], "raw": []}
    for image, prompt in zip(images, prompts):
        question = f'Does this figure show "{prompt}"? Please answer Yes or No.'
        messages = [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
        ]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        picture = image.convert("RGB").resize(resized[image.size])  # PIL's default filter, as qwen-vl-utils
        inputs = processor(text=[text], images=[picture], padding=True, return_tensors="pt", do_resize=False)
        answer = processor.tokenizer.encode("Yes", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=1,
                temperature=1.0,
                do_sample=False,
                output_scores=True,
                output_logits=True,
                return_dict_in_generate=True,
            )
        assert out.sequences[0, -1].item() not in special  # t2v_metrics would stop with an error
        result["t2v"].append(torch.softmax(out.scores[-1][0] / 1.0, dim=-1)[answer[0]].item())
        result["raw"].append(torch.softmax(out.logits[-1][0], dim=-1)[answer[0]].item())
    return result


def test_score_is_t2v_metrics_yes_probability(scorer, images, vqascore_locations):
    reference = t2v_metrics_reference(vqascore_locations["model"], images, PROMPTS)
    scores = scorer.score(images, PROMPTS)  # one batch: left padding, three image sizes
    np.testing.assert_allclose(scores, reference["t2v"], rtol=1e-4, atol=1e-7)
    assert np.ptp(scores) / np.mean(scores) > 0.05  # the tiny model tells the inputs apart
    # the repetition penalty of generation_config.json matters: leaving it out would be caught
    assert np.abs(np.array(reference["raw"]) / np.array(scores) - 1).min() > 1e-3


def test_cpu_offload_scores_the_same(scorer, images, vqascore_locations):
    # batches of any size are checked above: the reference scores one image at a time
    offloaded = get_scorer("vqascore", device="cpu", offload="true", **vqascore_locations)  # as --scorer-option
    assert offloaded.score(images[:1], PROMPTS[:1]) == pytest.approx(scorer.score(images[:1], PROMPTS[:1]), rel=1e-4)


def test_missing_model_and_bad_options_are_one_line_errors(vqascore_locations, tmp_path):
    with pytest.raises(HarnessError, match=r"no such directory .* pass model=DIR"):
        get_scorer("vqascore", model=str(tmp_path / "nowhere"))
    base = shutil.copytree(vqascore_locations["model"], tmp_path / "base")  # a base model: no chat template
    (base / "chat_template.jinja").unlink()
    with pytest.raises(HarnessError, match="has no chat template; not an Instruct checkpoint"):
        get_scorer("vqascore", device="cpu", model=str(base))
    with pytest.raises(HarnessError, match=r"cannot score a 10x3000 image"):
        fitted_size(10, 3000)
    for option, value, message in (
        ("batch_size", "0", "positive whole number"),
        ("dtype", "int8", "dtype must be"),
        ("offload", "maybe", "true or false"),
    ):
        with pytest.raises(HarnessError, match=f"vqascore: .*{message}") as error:
            get_scorer("vqascore", device="cpu", **vqascore_locations, **{option: value})
        assert "\n" not in str(error.value)


def test_registered_as_its_own_family_with_a_custom_version(scorer):
    assert scorer.version.startswith("v1+custom-")  # not the published weights: never the published key
    assert scorer.scale == "P(Yes) in [0,1]" and scorer.higher_is_better
    assert same_signal("vqascore") == ["vqascore"]
    check_scorer_options("vqascore", {"model": "DIR", "batch_size": "4", "dtype": "bfloat16", "offload": "1"})


def test_scores_the_tiny_runs_images_in_harness_run(tiny_run_dir, vqascore_locations, tmp_path):
    """`harness run` of the toy world's tiny preset, resumed with ``--scorers vqascore``: every image it
    made is scored by the tiny checkpoint on a CPU and ranked on the leaderboard."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run_dir, out)
    result = harness_main(
        "run",
        "--preset",
        "tiny",
        "--methods",
        "dpo",
        "--scorers",
        "vqascore",
        "--scorer-option",
        f"vqascore.model={vqascore_locations['model']}",
        "--scorer-option",
        "vqascore.device=cpu",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from harness.results.store import Store

    scores = Store(out / "results.db", readonly=True).scores_frame()
    vqa = scores[scores["metric"] == "vqascore"]
    assert len(vqa) == len(scores[scores["metric"] == scores["metric"].iloc[0]]) > 0  # every image
    assert vqa["value"].between(0, 1).all() and vqa["value"].nunique() > 1
    assert "vqascore" in result.stdout
