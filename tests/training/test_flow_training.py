"""Training and evaluating a flow-matching model: the shared trainer's options on the SD3.5-Medium-shaped tiny
pipeline (``tiny-sd3``: an MMDiT transformer, two CLIP encoders, no T5), and `harness evaluate` of what it writes.

The trainer's resume test runs every method on this pipeline too (tests/training/test_trainer.py)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.api import METHODS
from harness.train.trainer import resolve_config, train
from support.train_fixtures import one_torch_thread, write_expert_dir, write_pair_dir  # noqa: F401 (autouse fixture)

FAST = {"batch_size": 2, "lr": 1e-4, "scale_lr": False, "warmup_steps": 0}
RANK, ALPHA = 4, 8.0  # a LoRA scale of 2: an export that forgot alpha / r would be off by a factor of 2


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    return write_pair_dir(tmp_path_factory.mktemp("pairs"))


# What the sd35 recipes train with, kept; only compute lowered: 32 px, one step of 2, no accumulation, few
# experts and sampler / inversion steps.  SmPO's start from an SFT transformer is tested with init_unet below.
SD35_KEPT = (
    "mixed_precision",
    "master_weights",
    "ema_decay",
    "ema_on_cpu",
    "gradient_checkpointing",
    "lora_rank",
    "optimizer",
    "caption_dropout",
    "random_flip",
    "latent_sample",
)
SD35_LOWERED = {"resolution": 32, "max_steps": 1, "batch_size": 2, "effective_batch_size": None, "init_method": None}
# GRPO's reward: the toy world's quality (PickScore's weights are not offline); its group and sampler small.
SD35_METHOD_LOWERED = {
    "dro": {"expert_top_k": 2, "sampler_steps": 2},
    "smpo": {"inversion_steps": 2},
    "grpo": {"reward": "toy-quality", "group_size": 2, "sample_steps": 2},
    "online-dpo": {"reward": "toy-quality", "group_size": 2, "sample_steps": 2},
}


# DPO's in the fast tier; every other method's (a new one included) with the slow tests.
@pytest.mark.parametrize(
    "method", [m if m == "dpo" else pytest.param(m, marks=pytest.mark.slow) for m in METHODS.names()]
)
def test_every_sd35_recipe_trains_on_the_sd3_transformer(method, tiny_sd3_dir, pair_dir, tmp_path):
    """Each method's sd35 features (bf16, DRO's bf16 weights, EMA on the CPU and replay buffer from scored experts,
    SmPO's scored pairs and inversion, DPO's LoRA, checkpointing) on a flow-matching transformer."""
    data = write_expert_dir(tmp_path / "data", n=3)
    write_pair_dir(data)
    overrides = {**SD35_LOWERED, **SD35_METHOD_LOWERED.get(method, {})}
    logged: list[dict] = []
    result = train(
        method,
        base_model=tiny_sd3_dir,
        data_dir=data,
        output_dir=tmp_path / "out",
        preset="sd35",
        overrides=overrides,
        on_log=lambda step, terms: logged.append(terms),
    )
    recipe = resolve_config(method, "sd35")
    assert {k: result.config[k] for k in SD35_KEPT} == {k: getattr(recipe, k) for k in SD35_KEPT}
    assert len(logged) == 1 and math.isfinite(logged[0]["loss"])


@pytest.fixture(scope="module")
def lora_run(tiny_sd3_dir, pair_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """DPO with LoRA adapters on the transformer, 2 steps: the output directory and the logged terms."""
    out = tmp_path_factory.mktemp("sd3-lora")
    logged: list[dict] = []
    train(
        "dpo",
        base_model=tiny_sd3_dir,
        data_dir=pair_dir,
        output_dir=out,
        overrides={**FAST, "max_steps": 2, "lora_rank": RANK, "lora_alpha": ALPHA, "lr": 1e-2},
        on_log=lambda step, terms: logged.append(terms),
    )
    return out, logged


def transformer_weights(folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_pretrained(folder).state_dict()


def test_lora_on_the_transformer_trains_against_the_adapters_off_and_exports_base_plus_delta(lora_run, tiny_sd3_dir):
    out, logged = lora_run
    # LoRA's B starts at zero: policy == reference (adapters off) at step 1, apart after one update.
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logged[1]["model_mse"] != logged[1]["ref_mse"]

    merged, base = transformer_weights(out / "final" / "unet"), transformer_weights(tiny_sd3_dir / "transformer")
    assert merged.keys() == base.keys()
    adapters = load_file(str(out / "final" / "lora" / "pytorch_lora_weights.safetensors"))
    adapted = {key.removeprefix("transformer.").split(".lora_A.")[0] for key in adapters if ".lora_A." in key}
    # The image stream's attention and the joint attention's text stream (diffusers' SD3 LoRA targets).
    assert {name.rsplit(".", 1)[-1] for name in adapted} >= {
        "to_q",
        "to_k",
        "to_v",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
    }
    changed = {key for key in base if not torch.equal(merged[key], base[key])}
    assert changed and changed <= {f"{name}.weight" for name in adapted}
    for name in adapted:
        down, up = adapters[f"transformer.{name}.lora_A.weight"], adapters[f"transformer.{name}.lora_B.weight"]
        expected = base[f"{name}.weight"] + ALPHA / RANK * (up @ down)
        torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=1e-5, atol=1e-6)


def test_the_exported_adapters_load_into_the_sd3_pipeline_as_the_merged_transformer(lora_run, tiny_sd3_dir):
    from diffusers import SD3Transformer2DModel

    from harness.models.loading import load_pipeline

    out, _ = lora_run
    adapted = load_pipeline(tiny_sd3_dir)
    adapted.load_lora_weights(out / "final" / "lora")  # StableDiffusion3Pipeline's own loader, adapters unfused
    merged = load_pipeline(tiny_sd3_dir, unet=out / "final" / "unet")
    assert isinstance(merged.transformer, SD3Transformer2DModel)
    base = load_pipeline(tiny_sd3_dir)

    def latents(pipe) -> torch.Tensor:
        start = torch.randn((2, 16, 8, 8), generator=torch.Generator().manual_seed(0))
        return pipe(
            prompt=["a red square", "a blue circle"],
            latents=start,
            num_inference_steps=2,
            guidance_scale=4.5,
            output_type="latent",
        ).images

    with torch.no_grad():
        from_adapters, from_merged, from_base = latents(adapted), latents(merged), latents(base)
    torch.testing.assert_close(from_adapters, from_merged, rtol=1e-4, atol=1e-5)
    assert (from_merged - from_base).abs().max() > 1e-3  # the adapters do change the samples


def test_ema_export_and_init_unet_from_an_sd3_transformer(tiny_sd3_dir, pair_dir, tmp_path):
    ema_run = tmp_path / "ema"
    sft = train(
        "sft",
        base_model=tiny_sd3_dir,
        data_dir=pair_dir,
        output_dir=ema_run,
        overrides={**FAST, "lr": 1e-3, "max_steps": 2, "ema_decay": 0.9},
    )
    exported = load_file(str(sft.unet_dir / "diffusion_pytorch_model.safetensors"))
    shadow = load_file(str(ema_run / "checkpoint-2" / "ema.safetensors"))
    raw = load_file(str(ema_run / "checkpoint-2" / "unet.safetensors"))
    assert shadow.keys() == raw.keys() and all(torch.equal(exported[k], shadow[k]) for k in shadow)
    assert any(not torch.equal(exported[k], raw[k]) for k in raw)  # the EMA weights, not the last raw ones

    # lr 0: the exported transformer is the one training started from, exactly (weight decay scales by 1 - lr*wd).
    logged: list[dict] = []
    dpo = train(
        "dpo",
        base_model=tiny_sd3_dir,
        data_dir=pair_dir,
        output_dir=tmp_path / "dpo",
        overrides={**FAST, "lr": 0.0, "max_steps": 1, "init_unet": str(sft.unet_dir)},
        on_log=lambda step, terms: logged.append(terms),
    )
    started = transformer_weights(dpo.unet_dir)
    assert all(torch.equal(started[k], exported[k]) for k in exported)
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the reference is the init transformer too
    base = transformer_weights(tiny_sd3_dir / "transformer")
    assert any(not torch.equal(started[k], base[k]) for k in base)


def _run_rows(out: Path, method: str) -> dict:
    db = sqlite3.connect(out / "results.db")
    rows = db.execute(
        "SELECT i.suite, i.prompt_id, i.image_index, i.seed, i.sha256, s.scorer, s.value FROM images i "
        "JOIN runs r USING (run_id) JOIN scores s USING (image_id) WHERE r.method = ?",
        (method,),
    ).fetchall()
    db.close()
    return {row[:3] + (row[5],): (row[3], row[4], row[6]) for row in rows}


@pytest.mark.slow  # a real harness evaluate
def test_harness_evaluate_takes_a_trained_sd3_transformer_and_its_lora_adapters(lora_run, tiny_sd3_dir, tmp_path):
    """The merged transformer (--unet) and the adapters (--lora) are the same model: the same images, byte for byte."""
    from harness.cli import main

    final, results = lora_run[0] / "final", tmp_path / "results"
    common = [
        "evaluate",
        "--model",
        str(tiny_sd3_dir),
        "--preset",
        "tiny-flow",
        "--suites",
        "toy-seen",
        "--max-prompts",
        "2",
        "--out",
        str(results),
    ]
    assert main([*common, "--unet", str(final / "unet"), "--name", "merged"]) == 0
    assert main([*common, "--lora", str(final / "lora"), "--name", "adapters"]) == 0
    merged, adapters, base = (_run_rows(results, name) for name in ("merged", "adapters", "base"))
    assert len(merged) == 2 * 2 * 2  # 2 prompts x 2 images (the preset's) x 2 scorers
    assert merged == adapters
    assert merged.keys() == base.keys() and any(merged[key][1] != base[key][1] for key in merged)
    manifest = results / "images" / "merged" / "toy-seen" / "manifest.jsonl"
    assert {json.loads(line)["scheduler"] for line in manifest.read_text().splitlines()} == {
        "FlowMatchEulerDiscreteScheduler"
    }


@pytest.fixture(scope="module")
def sd3_t5_dir(tmp_path_factory) -> Path:
    """tiny-sd3 with a T5 encoder (a second SD3 pipeline), built once for the tests that read T5's states."""
    from dataclasses import replace

    from harness.testing.tiny_models import TINY_SHAPES, save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("sd3-t5") / "model", replace(TINY_SHAPES["tiny-sd3"], t5=True))


@pytest.mark.slow  # trains a second SD3 pipeline, with T5
def test_a_pipeline_with_t5_loads_and_trains_with_it_and_harness_drop_t5_leaves_it_out(
    sd3_t5_dir, pair_dir, tmp_path, monkeypatch
):
    from harness.models.families import DROP_T5
    from harness.models.loading import load_pipeline

    def t5_tokens(pipe) -> torch.Tensor:
        """The conditioning's tokens after CLIP's 77: T5's states, or the pipeline's zeros without it."""
        with torch.no_grad():
            hidden = pipe.encode_prompt("a red square", None, None, device="cpu", do_classifier_free_guidance=False)[0]
        return hidden[:, 77:]

    with_t5 = load_pipeline(sd3_t5_dir)
    assert with_t5.text_encoder_3 is not None and t5_tokens(with_t5).abs().sum() > 0
    monkeypatch.setenv(DROP_T5, "1")
    without = load_pipeline(sd3_t5_dir)
    assert without.text_encoder_3 is None and without.tokenizer_3 is None
    assert t5_tokens(without).shape == t5_tokens(with_t5).shape and not t5_tokens(without).any()
    monkeypatch.delenv(DROP_T5)

    logged: list[dict] = []
    train(
        "dpo",
        base_model=sd3_t5_dir,
        data_dir=pair_dir,
        output_dir=tmp_path / "dpo",
        overrides={**FAST, "max_steps": 2},
        on_log=lambda step, terms: logged.append(terms),
    )
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and math.isfinite(logged[1]["loss"])


@pytest.mark.parametrize("command", [["evaluate", "--suites", "toy-seen"], ["run", "--methods", "dpo"]])
def test_an_sd3_model_with_a_diffusion_samplers_preset_is_one_line_before_anything_is_made(
    command, tiny_sd3_dir, tmp_path, capsys
):
    from harness.cli import main

    out = tmp_path / "results"
    assert main([*command, "--model", str(tiny_sd3_dir), "--preset", "toy", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.endswith(
            "the toy preset's scheduler 'ddim' does not fit a flow-matching model "
            "(FlowMatchEulerDiscreteScheduler); pass the --preset of a model of its kind "
            "(flow matching: sd35, tiny-flow)"
        )
        and "\n" not in error
    )
    assert not out.exists()


# flow_grpo's LoRA targets (yifan123/flow_grpo scripts/train_sd3_dpo.py:389-398), which peft 0.10.0 (its pin) matches
# as a suffix after a dot: the joint attention `attn`, never the dual-attention blocks' `attn2`.
FLOW_GRPO_TARGETS = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)


@pytest.mark.parametrize("dual_attention", [False, True])
def test_sd3_lora_targets_are_flow_grpos_or_also_the_second_attention(dual_attention, tiny_sd3_dir):
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig

    from harness.models.families import SD3

    transformer = SD3Transformer2DModel.from_pretrained(tiny_sd3_dir / "transformer")
    names = [name for name, _ in transformer.named_modules()]
    expected = {name for name in names if name.endswith(tuple("." + target for target in FLOW_GRPO_TARGETS))}
    second = {
        name
        for name in names
        if (name.split(".")[-2:-1] == ["attn2"] and name.endswith((".to_q", ".to_k", ".to_v")))
        or name.endswith(".attn2.to_out.0")
    }
    assert second  # tiny-sd3 has a dual-attention block, as SD3.5 Medium's blocks 0-12
    transformer.add_adapter(LoraConfig(r=2, target_modules=SD3.lora_targets(dual_attention)))
    adapted = {name.removesuffix(".lora_A") for name, _ in transformer.named_modules() if name.endswith(".lora_A")}
    assert adapted == (expected | second if dual_attention else expected)


def test_the_sd35_recipe_adapts_flow_grpos_modules_and_encodes_128_t5_tokens(tiny_sd3_dir, pair_dir, tmp_path):
    """The sd35 preset's LoRA and text length reach the trainer: the exported adapters and the cached conditioning."""
    train(
        "dpo",
        base_model=tiny_sd3_dir,
        data_dir=pair_dir,
        output_dir=tmp_path / "out",
        preset="sd35",
        overrides={**SD35_LOWERED, "cache_dir": str(tmp_path / "features"), "lora_rank": RANK},
    )
    adapters = load_file(str(tmp_path / "out" / "final" / "lora" / "pytorch_lora_weights.safetensors"))
    adapted = {key.removeprefix("transformer.").split(".lora_A.")[0] for key in adapters if ".lora_A." in key}
    assert adapted and all(name.endswith(FLOW_GRPO_TARGETS) and ".attn2." not in name for name in adapted)
    cached = list((tmp_path / "features" / "text").glob("*/*/*.safetensors"))
    assert cached and {path.parents[1].name.rsplit("-", 1)[1] for path in cached} == {"t5x128"}
    # CLIP's 77 tokens, then 128 in T5's place (zeros: tiny-sd3 has no T5), as the pipeline encodes with that length.
    assert {load_file(str(path))["hidden"].shape[1] for path in cached} == {77 + 128}


@pytest.mark.parametrize("length", [128, 256])
def test_sd3_captions_are_encoded_with_the_configured_t5_length(length, sd3_t5_dir, tmp_path):
    from harness.data.readers import ImageLoader
    from harness.models.loading import load_pipeline
    from harness.train.features import FeatureEncoder

    pipe = load_pipeline(sd3_t5_dir)
    encoder = FeatureEncoder(
        pipe,
        device=torch.device("cpu"),
        resolution=32,
        cache_dir=tmp_path / "c",
        loader=ImageLoader(),
        max_sequence_length=length,
    )
    hidden = encoder.cond(["a red square"]).hidden
    with torch.no_grad():
        expected = pipe.encode_prompt(
            ["a red square"], None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=length
        )[0]
    assert hidden.shape[1] == 77 + length
    torch.testing.assert_close(hidden, expected.float())
    assert encoder.text_dir.name.endswith(f"-t5x{length}")  # one length's entries never serve another's


def test_lora_adapters_start_from_the_seed_whatever_ran_before(tiny_sd3_dir, pair_dir, tmp_path):
    """peft draws LoRA's A from torch's global generator: the same seed must give the same trained adapters after
    any other use of it in the process (a `harness run` worker's, a `harness train` process's)."""

    def adapters(name: str, draws: int) -> dict[str, torch.Tensor]:
        torch.randn(draws)  # what else happened to use the global generator first
        train(
            "dpo",
            base_model=tiny_sd3_dir,
            data_dir=pair_dir,
            output_dir=tmp_path / name,
            overrides={**FAST, "max_steps": 1, "lora_rank": RANK, "lora_alpha": ALPHA},
        )
        return load_file(str(tmp_path / name / "final" / "lora" / "pytorch_lora_weights.safetensors"))

    first, second = adapters("first", 1), adapters("second", 1000)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
