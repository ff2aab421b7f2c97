"""The plan (``harness.plan.planner``): every model's config resolved once per command, and `harness run --dry-run`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import harness.train.trainer
from harness.api import METHODS, Method
from harness.cli import main
from harness.plan.planner import RunOptions, describe, validate
from harness.plan.presets import get_preset

# The smallest real run: the tiny preset trains 2 steps; 2 prompts of one suite, 1 image each.
SMALL = ["--preset", "tiny", "--suites", "toy-seen", "--max-prompts", "2", "--images-per-prompt", "1"]


@pytest.fixture
def resolved(monkeypatch, tmp_path) -> Path:
    """A file with one line per ``resolve_config`` call, naming the method, from this process and the workers it
    forks (they inherit the patched function)."""
    log = tmp_path / "resolved.log"
    resolve = harness.train.trainer.resolve_config

    def counted(method, *args, **kwargs):
        with log.open("a") as file:
            file.write(method + "\n")
        return resolve(method, *args, **kwargs)

    monkeypatch.setattr(harness.train.trainer, "resolve_config", counted)
    return log


def calls(log: Path) -> Counter:
    return Counter(log.read_text().split()) if log.exists() else Counter()


@pytest.mark.slow
def test_a_run_with_eval_every_resolves_each_models_config_once(resolved, tmp_path):
    """Planning, validation, the run's records, the training job, the evaluation's sampler and --eval-every's
    points all read the one plan."""
    assert (
        main(["run", "--methods", "dpo", "--out", str(tmp_path / "out"), "--eval-every", "1", "--jobs", "1", *SMALL])
        == 0
    )
    assert calls(resolved) == Counter({"dpo": 1})
    assert (tmp_path / "out" / "models" / "dpo" / "snapshots" / "step-1" / "unet").is_dir()  # the points were made


@pytest.mark.slow
def test_harness_train_resolves_its_config_once(resolved, tmp_path):
    assert main(["train", "--preset", "tiny", "--method", "dpo", "--out", str(tmp_path / "alone")]) == 0
    assert calls(resolved) == Counter({"dpo": 1})


def test_dry_run_prints_the_plan_and_creates_nothing(resolved, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--methods",
                "smpo,dpo",
                "--out",
                str(out),
                "--set",
                "smpo.init_method=sft",
                "--set",
                "dpo.beta=123",
                "--set",
                "lr=0.002",
                "--set",
                "dpo.processes=2",  # where it trains, not a setting: its accumulation is derived from it
                "--eval-every",
                "1",
                "--steps",
                "3",
                "--dry-run",
                *SMALL,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["resolved.log"]
    # Each model's config resolved once, the method a recipe starts from included.
    assert calls(resolved) == Counter({"sft": 1, "smpo": 1, "dpo": 1})

    def setting(model: str, name: str) -> list[str]:
        block = printed[printed.index(f"\n{model} (") :].split("\n\n")[0]
        return next(line.split(maxsplit=2)[1:] for line in block.splitlines() if line.split()[:1] == [name])

    assert "\nsft (trained, only as another's start)\n" in printed
    assert "\nsmpo (trained, from sft's UNet)\n" in printed
    assert setting("dpo", "beta") == ["123", "--set dpo"]
    assert setting("smpo", "init_method") == ["'sft'", "--set smpo"]
    assert setting("dpo", "lr") == ["0.002", "--set"]
    assert setting("dpo", "max_steps") == ["2", "preset tiny"]
    assert setting("dpo", "optimizer") == ["'adamw'", "default"]
    # Its latents: 2 steps x 2 pairs x 2 images, each a mean and a std of 4 x 8 x 8 halves (2 x 256 x 2 bytes).
    dpo_block = printed[printed.index("\ndpo (") :].split("\n\n")[0]
    cache = next(line.strip() for line in dpo_block.splitlines() if line.strip().startswith("feature cache"))
    assert cache.startswith("feature cache auto -> on: latents <= 8.0 KiB (8 images x 1.0 KiB, 4x8x8 float16), ")
    assert setting("dpo", "training") == ["2", "processes x batch 2 x accumulation 1 per optimizer step"]
    assert "\n  processes " not in printed

    # The jobs in the order they start, sft's training before smpo's; the UNet evaluations of each.
    # Generation: 2 prompts x 1 image x 3 steps x 2 (the tiny preset's guidance 3.0 runs both halves) = 12.
    # Training, per sample: sft the policy (1); dpo policy and reference on two images (4); smpo the same plus
    # 2 evaluations per image per inverse step below t: rolled 5-step grid at t/T > -0.2, 0, 0.2, 0.4, 0.6 for t
    # uniform, 3.8 steps, 4 + 4 x 3.8 = 19.2.
    jobs = [line.split(". ", 1)[1] for line in printed.splitlines() if line[:4].strip().rstrip(".").isdigit()]
    assert jobs == [
        "evaluate base: 12 UNet evaluations",
        "train sft: 2 steps x 2 samples (1 process x batch 2 x accumulation 1 per optimizer step) = 4 samples x 1 "
        "= 4 UNet evaluations",
        "train smpo: 2 steps x 2 samples (1 process x batch 2 x accumulation 1 per optimizer step) = 4 samples x "
        "19.2 = 77 UNet evaluations",
        "evaluate smpo: 12 UNet evaluations",
        "evaluate smpo every 1 steps: 1 more points x 12 = 12 UNet evaluations",
        "train dpo: 2 steps x 4 samples (2 processes x batch 2 x accumulation 1 per optimizer step) = 8 samples x 4 "
        "= 32 UNet evaluations",
        "evaluate dpo: 12 UNet evaluations",
        "evaluate dpo every 1 steps: 1 more points x 12 = 12 UNet evaluations",
    ]
    assert "generation: 60 UNet evaluations in all" in printed
    assert "training: 113 UNet evaluations in all (" in printed  # 4 + 76.8 + 32


def test_dry_run_names_a_training_whose_method_does_not_state_its_unet_evaluations(tmp_path, monkeypatch):
    """A plugin method without ``unet_evals_per_sample`` (the contract's default, None): its training is named,
    and left out of the total rather than counted as zero."""
    monkeypatch.setattr(METHODS.get("sft"), "unet_evals_per_sample", Method.unet_evals_per_sample)
    options = RunOptions(methods=["sft", "dpo"], out=tmp_path / "out", preset="tiny", suites=["toy-seen"])
    printed = describe(validate(options, get_preset("tiny")))
    assert (
        "train sft: 2 steps x 2 samples (1 process x batch 2 x accumulation 1 per optimizer step) = 4 samples x the method's UNet evaluations per sample (not stated"
        in printed
    )
    assert "\ntraining: 16 UNet evaluations in all, besides sft's (" in printed  # dpo's 4 samples x 4
    assert not (tmp_path / "out").exists()


def test_dry_run_counts_an_online_trainings_reward_model_calls(tmp_path):
    """Each prompt's group is rated once by each scorer of the reward: 2 steps x 2 prompts x group 2."""
    options = RunOptions(
        methods=["grpo"],
        out=tmp_path / "out",
        preset="tiny-flow",
        suites=["toy-seen"],
        overrides={"grpo": {"reward": "toy-quality:0.5+toy-fidelity:0.5"}},
    )
    printed = describe(validate(options, get_preset("tiny-flow")))
    assert "= 4 samples x 24 = 96 UNet evaluations, 8 images rated by toy-quality and by toy-fidelity\n" in printed
