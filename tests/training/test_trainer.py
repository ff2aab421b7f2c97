"""The shared trainer end to end on the tiny pipeline: outputs, logs, resume, failures, options."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.api import METHODS, Online
from harness.errors import HarnessError
from harness.train.trainer import resolve_config, train
from harness.train.trainer import train as train_method
from support.train_fixtures import one_torch_thread, write_expert_dir, write_pair_dir  # noqa: F401 (autouse fixture)

FAST = {"batch_size": 2, "lr": 1e-4, "scale_lr": False, "warmup_steps": 0}
PER_METHOD = {
    "dpo": {},
    "sft": {},
    "smpo": {"inversion_steps": 3},
    "dro": {"sampler_steps": 4, "ema_decay": 0.9},
}
FLOW_ONLY = {"grpo", "online-dpo"}  # online methods sample with a flow-matching SDE


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train-data")
    write_pair_dir(path)
    write_expert_dir(path)
    return path


def unet_weights(unet_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))


def test_dpo_end_to_end_output_loads_into_a_pipeline_and_logs_every_step(tiny_model_dir, data_dir, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    logged: list[tuple[int, dict]] = []
    result = train(
        "dpo",
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "dpo",
        overrides={**FAST, "max_steps": 3},
        on_log=lambda step, terms: logged.append((step, terms)),
    )
    assert result.steps == 3 and result.unet_dir == tmp_path / "dpo" / "final" / "unet"
    assert result.unet_evals_per_sample == 4.0  # policy and reference on winner and loser
    assert [s for s, _ in logged] == [1, 2, 3]
    assert logged[0][1]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert {"loss", "lr", "implicit_acc", "model_mse", "ref_mse", "grad_norm"} <= set(logged[0][1])
    assert list((tmp_path / "dpo" / "tensorboard").glob("events.out.tfevents.*"))

    unet = UNet2DConditionModel.from_pretrained(result.unet_dir)
    base = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    changed = [n for n, p in unet.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed, "training did not change the UNet"
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, unet=unet, safety_checker=None, requires_safety_checker=False
    )
    image = pipe("a photo", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(image)).all()

    again = train(
        "dpo",
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "dpo",
        overrides={**FAST, "max_steps": 3},
    )
    assert again.steps == 3 and again.wall_s < result.wall_s  # finished runs are not redone


def test_a_finished_training_moved_with_its_inputs_is_not_redone_and_edited_data_is_refused(tiny_model_dir, tmp_path):
    """The checkpoint records its base model and data by content (harness.results.identity): the training, its base model
    and its data moved elsewhere resume as finished; with the data's labels flipped in place it is refused."""
    import os
    import shutil

    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(tiny_model_dir, before / "model")
    write_pair_dir(before / "data")
    first = train(
        "dpo",
        base_model=before / "model",
        data_dir=before / "data",
        output_dir=before / "out",
        overrides={**FAST, "max_steps": 2},
    )
    weights = first.unet_dir / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    os.rename(before, after)
    moved = train(
        "dpo",
        base_model=after / "model",
        data_dir=after / "data",
        output_dir=after / "out",
        overrides={**FAST, "max_steps": 2},
    )
    assert (after / "out" / "final" / "unet" / weights.name).stat().st_mtime_ns == stamp  # not trained again
    assert moved.steps == 2
    pairs = after / "data" / "pairs.jsonl"
    flipped = [{**row, "label_0": 1.0 - row["label_0"]} for row in map(json.loads, pairs.read_text().splitlines())]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in flipped))
    with pytest.raises(HarnessError, match="checkpoint-2 was written by a run with different settings"):
        train(
            "dpo",
            base_model=after / "model",
            data_dir=after / "data",
            output_dir=after / "out",
            overrides={**FAST, "max_steps": 2},
        )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_model_dir", "tiny_sd3_dir"])  # a diffusion UNet, a flow-matching transformer
@pytest.mark.parametrize("method", METHODS.names())  # every registered method, a new one included
def test_killed_and_resumed_run_ends_with_the_same_weights(method, model, request, data_dir, tmp_path):
    if method in FLOW_ONLY and model != "tiny_sd3_dir":
        pytest.skip(f"{method} trains flow-matching models only")
    tiny_model_dir = request.getfixturevalue(model)
    # A warmup that spans the interruption and two micro-steps per step: a resume that dropped the LR
    # schedule's or the accumulation's state would end elsewhere.
    overrides = {
        **FAST,
        **PER_METHOD.get(method, {}),
        "max_steps": 4,
        "checkpoint_every": 2,
        "lr_scheduler": "linear",
        "warmup_steps": 3,
        "grad_accum": 2,
    }

    def train(*args, **kwargs):  # each method's tiny settings under these overrides
        return train_method(*args, preset="tiny", **kwargs)

    def kill_at_step_3(step: int, terms: dict) -> None:
        if step == 3:  # after checkpoint-2 was written, before checkpoint-4: a mid-run kill
            # What a process killed here leaves on disk is the directory as it is now, no cleanup run: copied,
            # while this run goes on uninterrupted (one training fewer than a second run killed here).
            shutil.copytree(tmp_path / "straight", tmp_path / "resumed")

    straight = train(
        method,
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "straight",
        overrides=overrides,
        on_log=kill_at_step_3,
    )
    # The UNet evaluations the method states (`harness run --dry-run`'s estimate) are the ones it makes.
    config = resolve_config(method, "tiny", overrides)
    stated = METHODS.get(method)(config).unet_evals_per_sample()
    if method == "smpo":  # the policy's inversion steps below t: an expectation, over 16 pairs' t here
        assert straight.unet_evals_per_sample == pytest.approx(stated, abs=1.0)
    else:
        assert straight.unet_evals_per_sample == stated

    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed_steps: list[int] = []
    resumed = train(
        method,
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "resumed",
        overrides=overrides,
        on_log=lambda step, terms: resumed_steps.append(step),
    )
    assert resumed_steps == [3, 4]
    a, b = unet_weights(straight.unet_dir), unet_weights(resumed.unet_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.unet_evals_per_sample == pytest.approx(straight.unet_evals_per_sample)
    # The reward's calls: each prompt's group scored once per scorer (online), none offline; counted once
    # across the resume.
    spec = METHODS.get(method)(config).data_spec()
    scored = {name: float(spec.group_size) for name in spec.weights} if isinstance(spec, Online) else {}
    assert straight.reward_calls_per_sample == resumed.reward_calls_per_sample == scored


def test_unknown_override_is_a_one_line_error_listing_valid_names():
    with pytest.raises(HarnessError) as error:
        resolve_config("dpo", None, {"betta": 1.0})
    message = str(error.value)
    assert "betta" in message and "beta" in message and "\n" not in message


def test_config_layers_defaults_preset_method_entry_and_overrides(capsys):
    from harness.plan.presets import SDXL_VAE

    config = resolve_config("dpo", "sdxl", {"beta": "2500", "scale_lr": "false"})
    assert config.effective_batch_size == 2048 and config.warmup_steps == 200  # DPO's own sdxl entry
    assert (config.optimizer, config.resolution, config.vae) == ("adafactor", 1024, SDXL_VAE)  # the preset's recipe
    assert config.beta == 2500.0 and config.scale_lr is False  # string overrides converted to the field types
    toy = resolve_config("dpo", "toy", {})
    assert toy.max_steps == 300 and toy.beta == 500.0  # the toy preset's step count, DPO's own toy beta
    assert resolve_config("dpo", None, {}).beta == 5000.0  # no preset: the paper's defaults
    assert capsys.readouterr().err == ""  # every built-in method has settings for every preset
    with pytest.raises(HarnessError, match="batch_size"):
        resolve_config("dpo", None, {"batch_size": 0})


def test_a_method_without_toy_settings_gets_the_presets_rule_and_a_warning(monkeypatch, capsys):
    from harness.api import METHODS
    from methods.dpo import DPO

    class Untuned(DPO):
        presets = {}  # the paper's values only, as a newcomer's plugin might start

    monkeypatch.setitem(METHODS._entries, "untuned", Untuned)
    config = resolve_config("untuned", "toy", {})
    assert (config.max_steps, config.batch_size, config.lr) == (300, 16, 1e-5)  # the toy preset's rule, not 2000 x 1
    warning = capsys.readouterr().err
    assert "untuned has no settings for preset 'toy'" in warning and "max_steps=300" in warning
    assert resolve_config("untuned", "sd15", {}).max_steps == 2000 and capsys.readouterr().err == ""  # paper scale


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_model_dir, data_dir, tmp_path):
    # A learning rate this absurd blows the weights up within a few steps.
    overrides = {**FAST, "lr": 1e12, "max_grad_norm": None, "max_steps": 20, "checkpoint_every": 1}
    with pytest.raises(HarnessError, match=r"loss became (nan|inf) at step \d+.*last good checkpoint"):
        train("sft", base_model=tiny_model_dir, data_dir=data_dir, output_dir=tmp_path / "nan", overrides=overrides)
    checkpoints = list((tmp_path / "nan").glob("checkpoint-*"))
    assert checkpoints and not (tmp_path / "nan" / "final").exists()


@pytest.mark.parametrize("steps", [1, 3])
def test_corrupt_images_are_skipped_and_counted_whatever_the_steps(tiny_model_dir, tmp_path, capsys, steps):
    # Left out before the first step, not met when drawn: one step counts the same image as three.
    data = write_pair_dir(tmp_path / "data", n_pairs=4, corrupt=1)
    result = train(
        "dpo",
        base_model=tiny_model_dir,
        data_dir=data,
        output_dir=tmp_path / "out",
        overrides={**FAST, "max_steps": steps},
    )
    assert result.steps == steps and result.skipped_images == 1
    assert result.data_summary == "pairs 5 read, 1 tie skipped, 1 unreadable"
    out = capsys.readouterr().out
    assert "training data: pairs 5 read, 1 tie skipped, 1 unreadable" in out and "skipped 1 corrupt image" in out
    # Images the cache may hold: 2 per pair drawn (steps x 2 pairs), at most the 3 usable pairs' 6 images in 2
    # orientations; each a mean and a std of 4 x 8 x 8 halves, 1 KiB.
    images = 2 * min(steps * 2, 3 * 2)
    assert f"feature cache: auto -> on: latents <= {images}.0 KiB ({images} images x 1.0 KiB, 4x8x8 float16)" in out


def test_lora_trains_adapters_against_the_disabled_adapter_reference(tiny_model_dir, data_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    logged: list[dict] = []
    result = train(
        "dpo",
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "lora",
        overrides={**FAST, "max_steps": 2, "lora_rank": 4, "lr": 1e-2},
        on_log=lambda step, terms: logged.append(terms),
    )
    # LoRA's B starts at zero, so policy == reference at first; after one step they differ, which they
    # never would if the "reference" were the adapted network itself.
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logged[1]["model_mse"] != logged[1]["ref_mse"] and logged[1]["loss"] != pytest.approx(math.log(2))
    merged = UNet2DConditionModel.from_pretrained(result.unet_dir).state_dict()
    base = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").state_dict()
    assert merged.keys() == base.keys()
    changed = {n for n in base if not torch.equal(merged[n], base[n])}
    assert changed and all(any(t in n for t in ("to_q", "to_k", "to_v", "to_out")) for n in changed)
    assert (tmp_path / "lora" / "final" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_bf16_accumulation_ema_adafactor_checkpointing_and_scale_lr(tiny_model_dir, data_dir, tmp_path):
    logged: list[dict] = []
    overrides = {
        "batch_size": 1,
        "grad_accum": 2,
        "lr": 1e-3,
        "scale_lr": True,
        "warmup_steps": 0,
        "max_steps": 2,
        "mixed_precision": "bf16",
        "optimizer": "adafactor",
        "ema_decay": 0.5,
        "ema_on_cpu": True,
        "gradient_checkpointing": True,
    }
    result = train(
        "sft",
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "opts",
        overrides=overrides,
        on_log=lambda step, terms: logged.append(terms),
    )
    assert logged[0]["lr"] == pytest.approx(1e-3 * 1 * 2)  # Salesforce --scale_lr: x batch x accumulation x processes
    assert all(math.isfinite(t["loss"]) for t in logged)
    ema = unet_weights(result.unet_dir)
    last = load_file(str(tmp_path / "opts" / "checkpoint-2" / "unet.safetensors"))
    saved_ema = load_file(str(tmp_path / "opts" / "checkpoint-2" / "ema.safetensors"))
    # The exported UNet holds the EMA weights, not the last raw weights.
    assert all(torch.equal(ema[k], saved_ema[k]) for k in saved_ema)
    assert any(not torch.equal(ema[k], last[k]) for k in last)


def test_sdxl_conditioning_is_the_pipelines_and_trains(small_sdxl_dir, data_dir, tmp_path, monkeypatch):
    """What reaches the UNet in training is what diffusers' StableDiffusionXLPipeline makes of the same
    caption: ``encode_prompt``'s hidden states (both encoders' penultimate layers, concatenated) and
    pooled embedding (the second encoder's projection), and through ``_get_add_time_ids`` the public
    SDXL training scripts' time ids: original size, crop top-left, target size = (res, res, 0, 0, res, res)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    received: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
    forward = UNet2DConditionModel.forward

    def recording_forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kwargs):
        received.append(
            (
                encoder_hidden_states.detach().float().clone(),
                {k: v.detach().float().clone() for k, v in added_cond_kwargs.items()},
            )
        )
        return forward(
            self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=added_cond_kwargs, **kwargs
        )

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
    logged: list[dict] = []
    result = train(
        "dpo",
        base_model=small_sdxl_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "sdxl",
        overrides={**FAST, "max_steps": 2},
        on_log=lambda step, terms: logged.append(terms),
    )
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert math.isfinite(logged[1]["loss"])
    assert UNet2DConditionModel.from_pretrained(result.unet_dir).config.addition_embed_type == "text_time"

    pipe = StableDiffusionXLPipeline.from_pretrained(small_sdxl_dir)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the native size the trainer resizes to
    captions = [json.loads(line)["caption"] for line in (data_dir / "pairs.jsonl").read_text().splitlines()]
    captions.append("")  # DPO's caption dropout trains 20% of the samples unconditioned
    expected = {}
    with torch.no_grad():
        for caption in captions:
            hidden, _, pooled, _ = pipe.encode_prompt(caption, device="cpu", do_classifier_free_guidance=False)
            expected[caption] = (hidden[0], pooled[0])
    time_ids = pipe._get_add_time_ids(
        (resolution, resolution),
        (0, 0),
        (resolution, resolution),
        dtype=torch.float32,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )[0]

    trained_on = set()
    for hidden_batch, added in received:
        for hidden, pooled, ids in zip(hidden_batch, added["text_embeds"], added["time_ids"]):
            caption = next((c for c, (h, _) in expected.items() if torch.allclose(hidden, h, atol=1e-5)), None)
            assert caption is not None, "the UNet was given hidden states that encode_prompt makes of no caption"
            torch.testing.assert_close(pooled, expected[caption][1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ids, time_ids)
            trained_on.add(caption)
    assert len(trained_on - {""}) >= 2


def test_ema_follows_the_diffusers_schedule_from_the_first_step(tiny_model_dir, data_dir, tmp_path):
    """Stated without the implementation: update 1 copies the weights (decay 0), update n >= 2 uses
    decay min((1 + (n - 1)) / (10 + (n - 1)), ema_decay).  A constant 0.9999 from step 1 would leave
    the exported UNet ~99.97% base after 3 steps."""
    overrides = {**FAST, "lr": 1e-3, "max_steps": 3, "checkpoint_every": 1, "checkpoints_kept": 3, "ema_decay": 0.9999}
    result = train(
        "sft", base_model=tiny_model_dir, data_dir=data_dir, output_dir=tmp_path / "ema", overrides=overrides
    )
    raw = [load_file(str(tmp_path / "ema" / f"checkpoint-{n}" / "unet.safetensors")) for n in (1, 2, 3)]
    expected = dict(raw[0])
    for n, weights in ((2, raw[1]), (3, raw[2])):
        decay = min((1 + (n - 1)) / (10 + (n - 1)), 0.9999)
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    exported = unet_weights(result.unet_dir)
    base = unet_weights(tiny_model_dir / "unet")
    for name, value in expected.items():
        torch.testing.assert_close(exported[name], value, rtol=1e-5, atol=1e-7)
    moved = sum((exported[k] - base[k]).abs().sum() for k in expected)
    assert moved > 0.5 * sum((raw[2][k] - base[k]).abs().sum() for k in expected)  # not held back at the base


@pytest.mark.parametrize("refill_every, evals_per_sample", [(1, 7.0), (2, 5.5)])
def test_dro_refills_from_each_micro_batch_as_the_public_code(
    tiny_model_dir, data_dir, tmp_path, refill_every, evals_per_sample
):
    """Published (basiclab/DiffusionDRO train.py:654-714): every forward/backward turns its experts into buffer
    rows, one trajectory each.  With 2 experts, 3 sampler steps, policy and reference on 2 expert + 2 policy
    states: (2*3 + 4 + 4) / 2 = 7 UNet evaluations per sample; refilling every second iteration: (14 + 8) / 4
    = 5.5."""
    overrides = {
        **FAST,
        "max_steps": 2,
        "grad_accum": 2,
        "sampler_steps": 3,
        "buffer_size": 2,
        "refill_every": refill_every,
        "ema_decay": None,
    }
    result = train(
        "dro", base_model=tiny_model_dir, data_dir=data_dir, output_dir=tmp_path / "dro", overrides=overrides
    )
    assert result.unet_evals_per_sample == pytest.approx(evals_per_sample)


def test_pure_bf16_weights_as_the_public_dro_code(tiny_model_dir, data_dir, tmp_path):
    """basiclab/DiffusionDRO train.py:379-389 trains the UNet in bf16 (no fp32 copy); :392 its EMA over those
    bf16 weights."""
    from diffusers import UNet2DConditionModel

    overrides = {**FAST, "max_steps": 2, "mixed_precision": "bf16", "master_weights": "bf16", "ema_decay": 0.9}
    logged: list[dict] = []
    result = train(
        "sft",
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "bf16",
        overrides=overrides,
        on_log=lambda step, terms: logged.append(terms),
    )
    checkpoint = tmp_path / "bf16" / "checkpoint-2"
    assert {t.dtype for t in load_file(str(checkpoint / "unet.safetensors")).values()} == {torch.bfloat16}
    assert {t.dtype for t in load_file(str(checkpoint / "ema.safetensors")).values()} == {torch.bfloat16}
    assert all(math.isfinite(t["loss"]) for t in logged)
    assert UNet2DConditionModel.from_pretrained(result.unet_dir).dtype == torch.float32  # exported as usual


def test_a_recipe_that_starts_from_sft_says_how_when_trained_alone(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(HarnessError, match=r"harness train --method sft .*--set init_unet=.*harness run"):
        train("smpo", base_model=tiny_model_dir, data_dir=data_dir, output_dir=tmp_path / "smpo", preset="sd15")
    assert not (tmp_path / "smpo").exists()


def test_effective_batch_size_sets_the_accumulation_and_the_scaled_lr(tiny_model_dir, data_dir, tmp_path):
    """The published recipes give an effective batch (sd15 DPO: 2048 pairs); the accumulation follows from
    the per-process batch, and Salesforce's --scale_lr multiplies the lr by that effective batch."""
    logged: list[dict] = []
    overrides = {**FAST, "batch_size": 1, "effective_batch_size": 3, "scale_lr": True, "lr": 1e-3, "max_steps": 1}
    trainer_dir = tmp_path / "eff"
    train(
        "sft",
        base_model=tiny_model_dir,
        data_dir=data_dir,
        output_dir=trainer_dir,
        overrides=overrides,
        on_log=lambda step, terms: logged.append(terms),
    )
    assert logged[0]["lr"] == pytest.approx(3e-3)
    state = json.loads((trainer_dir / "final" / "trainer_state.json").read_text())
    assert state["samples"] == 3  # one optimizer step of three micro-batches of one image
    with pytest.raises(HarnessError, match="not a multiple"):
        train(
            "sft",
            base_model=tiny_model_dir,
            data_dir=data_dir,
            output_dir=tmp_path / "bad",
            overrides={**overrides, "batch_size": 2},
        )


def test_batches_flip_images_and_sample_the_posterior_as_the_public_scripts(tiny_model_dir, data_dir, tmp_path):
    from harness.api.registry import METHODS
    from harness.train.trainer import Trainer, step_generator

    def batches(**options) -> list:
        config = resolve_config("dpo", None, {**FAST, **options})
        trainer = Trainer(
            METHODS.get("dpo")(config),
            base_model=str(tiny_model_dir),
            data_dir=data_dir,
            output_dir=tmp_path / "unused",
            seed=0,
            on_log=None,
        )
        trainer._setup()
        return [trainer.make_batch(step, 0, step_generator(0, step, 0)) for step in range(4)]

    published = batches()
    assert any(key.endswith("-flip") for batch in published for key in batch.keys)
    assert any(not key.endswith("-flip") for batch in published for key in batch.keys)
    assert all(not torch.equal(batch.latents, batch.means) for batch in published)  # a fresh posterior sample
    plain = batches(random_flip=False, latent_sample=False)
    assert all(not key.endswith("-flip") and torch.equal(b.latents, b.means) for b in plain for key in b.keys)


def test_adamw_per_operation_rounds_every_operation_to_bf16_as_the_public_dro_code():
    """adamw_fused False: torch's foreach AdamW, whose every operation rounds to the weights' dtype: on a bf16
    UNet, the public DRO optimizer (basiclab/DiffusionDRO train.py:460-461, torch 2.3.1's default on CUDA:
    foreach).  Checked against AdamW written here operation by operation, each in fp32 and rounded to bf16;
    the fused kernel (its arithmetic in fp32, only the results rounded) is not that."""
    from harness.api import TrainConfig
    from harness.train.trainer import make_optimizer

    lr, (b1, b2), eps, wd = 1e-3, (0.9, 0.999), 1e-8, 0.01
    generator = torch.Generator().manual_seed(0)
    start = (0.05 * torch.randn(4096, generator=generator)).bfloat16()
    grads = [
        (
            torch.randn(4096, generator=generator) * 10 ** torch.empty(4096).uniform_(-3, 0, generator=generator)
        ).bfloat16()
        for _ in range(5)
    ]

    def bf16(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16)

    param, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for k, grad in enumerate(grads, 1):
        param = bf16(param.float() * (1 - lr * wd))
        m = bf16(torch.lerp(m.float(), grad.float(), 1 - b1))
        v = bf16(v.float() * b2)
        v = bf16(torch.addcmul(v.float(), grad.float(), grad.float(), value=1 - b2))
        denom = bf16(bf16(bf16(v.float().sqrt()).float() / (1 - b2**k) ** 0.5).float() + eps)
        param = bf16(param.float() - lr / (1 - b1**k) * m.float() / denom.float())

    def trained(fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.nn.Parameter(start.clone())
        optimizer = make_optimizer([weights], TrainConfig(adamw_fused=fused, weight_decay=wd), lr)
        for grad in grads:
            weights.grad = grad.clone()
            optimizer.step()
        return weights.detach(), optimizer.state[weights]["exp_avg_sq"]

    per_operation, fused = trained(False), trained(True)
    assert per_operation[0].dtype == torch.bfloat16 and per_operation[1].dtype == torch.bfloat16
    assert torch.equal(per_operation[0], param) and torch.equal(per_operation[1], v)
    assert (fused[0] != param).float().mean() > 0.02 and (fused[1] != v).float().mean() > 0.1


def test_unclipped_training_logs_the_gradient_norm_that_goes_through(tiny_model_dir, data_dir, tmp_path):
    """max_grad_norm None, DRO's published recipes (basiclab/DiffusionDRO train.py:460-461 and :781 clip
    nothing): the weights are those of a clip that never acts (at 1e9), and the norm is logged as with a clip;
    a clip that acts (1e-3) changes the weights."""
    runs = {}
    for name, clip in (("none", None), ("never", 1e9), ("acts", 1e-3)):
        logged: list[dict] = []
        result = train(
            "sft",
            base_model=tiny_model_dir,
            data_dir=data_dir,
            output_dir=tmp_path / name,
            overrides={**FAST, "max_steps": 2, "max_grad_norm": clip},
            on_log=lambda step, terms: logged.append(terms),
        )
        runs[name] = (unet_weights(result.unet_dir), [terms["grad_norm"] for terms in logged])
    (none, none_norms), (never, never_norms), (acts, _) = runs["none"], runs["never"], runs["acts"]
    assert none_norms == pytest.approx(never_norms) and min(none_norms) > 1e-3
    assert all(torch.equal(none[k], never[k]) for k in none)
    assert any(not torch.equal(none[k], acts[k]) for k in none)


def test_a_step_the_fp16_scaler_skips_advances_neither_the_lr_schedule_nor_the_ema(tiny_model_dir, data_dir, tmp_path):
    """An fp16 overflow: the loss scaler skips the optimizer step, and accelerate's AcceleratedScheduler
    (0.27.2, scheduler.py:66-68), which the public scripts' prepared scheduler is, skips the LR schedule's
    step too.  The scaler is torch's GradScaler at its default scale, the one accelerate installs for fp16 on
    a GPU (on a CPU the trainer has none); SFT's loss times 1e36 overflows once scaled, as fp16's range does.
    The fused AdamW skips inside its kernel, so accelerate's step_was_skipped stays False: the scale's
    back-off tells."""
    from accelerate.optimizer import AcceleratedOptimizer

    from harness.train.trainer import Trainer
    from methods.sft import SFT

    class LargeLoss(SFT):
        def loss(self, batch, models):
            loss, logs = super().loss(batch, models)
            return loss * 1e36, logs

    config = resolve_config("sft", None, {**FAST, "warmup_steps": 5, "ema_decay": 0.9})
    trainer = Trainer(
        LargeLoss(config),
        base_model=str(tiny_model_dir),
        data_dir=data_dir,
        output_dir=tmp_path / "unused",
        seed=0,
        on_log=None,
    )
    trainer._setup()
    scaler = torch.amp.GradScaler("cpu")
    trainer.accelerator.scaler = scaler
    trainer.optimizer = AcceleratedOptimizer(trainer.optimizer.optimizer, device_placement=False, scaler=scaler)
    trainer.accelerator._optimizers = [trainer.optimizer]
    params = {n: p for n, p in trainer.unet.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    terms = trainer._optimizer_step(0, params)
    assert terms["skipped_step"] == 1.0 and scaler.get_scale() == 2.0**15
    assert all(torch.equal(before[n], p) for n, p in params.items())
    assert trainer.lr_scheduler.last_epoch == 0 and trainer.ema.model.optimization_step == 0
    scaler.update(1e-3)  # a scale the scaled loss fits in: the next step is taken
    terms = trainer._optimizer_step(1, params)
    assert terms["skipped_step"] == 0.0
    assert trainer.lr_scheduler.last_epoch == 1 and trainer.ema.model.optimization_step == 1
    assert trainer._optimizer_step(2, params)["lr"] == pytest.approx(
        FAST["lr"] / 5
    )  # warmup's first step, not the second


@pytest.mark.parametrize("dtype, name", [(torch.float16, "fp16"), (torch.bfloat16, "bf16")])
def test_reference_dtype_runs_the_reference_and_its_errors_in_that_dtype_outside_autocast(
    dtype, name, tiny_model_dir, data_dir, tmp_path
):
    """Salesforce DPO train.py:939, 1132-1137 (SmPO train.py:880, 1052-1057): the reference UNet cast to fp16 and
    called outside autocast, ``(ref_pred - target).pow(2).mean(dim=[1,2,3])`` on fp16 tensors; DRO train.py:363-368,
    753-758 the same in bf16.  Computed here from the base UNet's weights, independently of the trainer."""
    from diffusers import UNet2DConditionModel

    from harness.api import per_sample_error
    from harness.api.registry import METHODS
    from harness.train.trainer import Trainer, step_generator

    config = resolve_config("dpo", None, {**FAST, "reference_dtype": name, "mixed_precision": "bf16"})
    trainer = Trainer(
        METHODS.get("dpo")(config),
        base_model=str(tiny_model_dir),
        data_dir=data_dir,
        output_dir=tmp_path / "unused",
        seed=0,
        on_log=None,
    )
    trainer._setup()
    batch = trainer.make_batch(0, 0, step_generator(0, 0, 0))
    t = torch.tensor([100, 700] * 2)
    target = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(1))
    x_t = batch.latents + 0.5 * target
    cond = batch.cond.repeat(2)
    ref_err = per_sample_error(trainer.models.reference(x_t, t, cond), target)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").to(dtype).eval()
    with torch.no_grad():
        pred = unet(x_t.to(dtype), t, encoder_hidden_states=cond.hidden.to(dtype)).sample
    assert pred.dtype == dtype
    expected = (pred - target.to(dtype)).pow(2).mean(dim=[1, 2, 3]).float()
    torch.testing.assert_close(ref_err, expected, rtol=0, atol=0)
    assert not torch.equal(ref_err, (pred.float() - target).pow(2).mean(dim=[1, 2, 3]))  # fp32 errors differ
    with pytest.raises(HarnessError, match="reference_dtype needs a frozen reference copy"):
        resolve_config("dpo", None, {"reference_dtype": name, "lora_rank": 4})


@pytest.mark.parametrize(
    "method, vae_fp32, dtype",
    [("kto", True, torch.float32), ("mapo", True, torch.float32), ("dpo", False, torch.bfloat16)],
)
def test_kto_and_mapo_encode_with_an_fp32_vae_whatever_the_mixed_precision(
    method, vae_fp32, dtype, tiny_model_dir, data_dir, tmp_path
):
    """diffusion-kto train_kto_sd_v1.5.py:859 and mapo train.py:181 move the VAE to the GPU in fp32; the Salesforce
    DPO script casts it to the mixed-precision dtype with the text encoder.  The feature cache is keyed by the
    VAE's weights, dtype included: the two never share posteriors."""
    from harness.api.registry import METHODS
    from harness.train.features import module_fingerprint
    from harness.train.trainer import Trainer

    config = resolve_config(method, None, {**FAST, "mixed_precision": "bf16"})
    assert config.vae_fp32 is vae_fp32
    trainer = Trainer(
        METHODS.get(method)(config),
        base_model=str(tiny_model_dir),
        data_dir=data_dir,
        output_dir=tmp_path / "unused",
        seed=0,
        on_log=None,
    )
    trainer._setup()
    assert next(trainer.features.vae.parameters()).dtype == dtype
    assert next(trainer.features.pipe.text_encoder.parameters()).dtype == torch.bfloat16
    assert module_fingerprint(trainer.features.vae) != module_fingerprint(
        trainer.features.vae.to(torch.bfloat16 if vae_fp32 else torch.float32)
    )
