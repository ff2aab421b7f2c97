"""The published recipes, rehearsed offline end to end: `harness run --preset sd15` (and `sdxl`, `sd35`) on
SD1.5- / SDXL- / SD3.5-Medium-shaped tiny pipelines, a local Pick-a-Pic v2 copy in the hub's layout, local HPDv2
prompts and tiny scorer weights in the official file layouts (tests/offline_world.py, conftest.py).

Every step a real run takes is taken: DRO's experts ranked by HPSv2 (the data step, through the
scorer registry), SmPO's pairs scored with PickScore's raw cosine, SFT trained first and SmPO
started from it, each method's training with its recipe (precision, EMA, replay buffer, inversion,
flips, posterior samples), generation, the six scorers, the leaderboard and its guard marks.
Only compute is lowered, to fit a CPU test: one optimizer step without accumulation
(`max_steps=1`, `effective_batch_size=None`), 10 experts instead of 500 (the copy has ~40 unique
images, so the ranking still chooses), DRO's sampler 2 steps instead of 20, SmPO's inversion 2
steps instead of 5 / 10, one prompt of each suite, one image per prompt, 1 sampler step in the
evaluation. The SD1.5 shape's attention at 64x64 latents costs ~0.17 s per UNet call on a CPU core
even at tiny widths (the SDXL shape's VAE ~1 s per 1024 px image), so the published compute, for
four models, would take hours here.
Every command runs through the CLI's ``main`` in this process (``support.cli``).
The random-weight PickScore gives cosines around 0, outside the published bounds for the real
model's (0.115..0.282), so SmPO's bounds are widened here, and only here, to [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.api.data import Online
from harness.api.registry import METHODS
from support.cli import harness_main
from test_readme import readme_command

PLUGIN = Path(__file__).resolve().parent / "plugins" / "tiny_scorer_archs.py"
# The built-in methods (those of the methods/ package), and the offline ones: online methods sample from a
# flow-matching policy, so the README's SD1.5 and SDXL commands leave them out.
BUILT_IN = sorted(name for name, method in METHODS.items() if method.__module__.startswith("methods."))
OFFLINE = sorted(
    name for name in BUILT_IN if not isinstance(METHODS.get(name)(METHODS.get(name).Config()).data_spec(), Online)
)
SCORERS = ("pickscore", "hpsv2", "hpsv2.1", "imagereward", "clip", "aesthetic")


def scorer_options(locations: dict[str, dict[str, str]]) -> list[str]:
    options = {**locations, "pickscore-cosine": locations["pickscore"]}  # the same model, its raw cosine
    return [
        arg
        for name, keywords in options.items()
        for key, value in keywords.items()
        for arg in ("--scorer-option", f"{name}.{key}={value}")
    ]


# Each method's compute lowered as the module says (SmPO's bounds widened for the random PickScore).
LOWERED = {"dro": ("expert_top_k=10", "sampler_steps=2"), "smpo": ("inversion_steps=2", "score_lo=-1", "score_hi=1")}


def readme_methods(preset: str) -> tuple[str, ...]:
    command = readme_command(preset)
    return tuple(command[command.index("--methods") + 1].split(","))


def rehearse(
    preset: str, model: Path, data: Path, out: Path, scorer_locations: dict, methods: tuple[str, ...], *arguments: str
) -> None:
    """The README's `harness run --preset PRESET ...` offline, for ``methods``, its compute lowered as the
    module says (the options added last win)."""
    lowered = [
        arg for method in methods for setting in LOWERED.get(method, ()) for arg in ("--set", f"{method}.{setting}")
    ]
    result = harness_main(
        "--plugin",
        str(PLUGIN),
        *readme_command(preset),
        "--model",
        str(model),
        "--data",
        str(data),
        "--methods",
        ",".join(methods),
        "--max-prompts",
        "1",
        "--images-per-prompt",
        "1",
        "--steps",
        "1",
        "--out",
        str(out),
        "--set",
        "max_steps=1",
        "--set",
        "effective_batch_size=None",
        *lowered,
        *scorer_options(scorer_locations),
        *arguments,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["sd15", "sdxl"])
def test_published_recipes_run_end_to_end_offline(
    shape, request, tmp_path, pickapic_v2_dir, hpdv2_dir, scorer_locations
):
    model = request.getfixturevalue(f"tiny_{shape}_dir")
    out = tmp_path / "run"
    # SDXL's recipe replaces the VAE by the fp16-safe one from the hub: offline, a local stand-in.
    vae = ["--vae", str(model / "vae")] if shape == "sdxl" else []
    methods = readme_methods(shape)
    assert sorted(methods) == OFFLINE  # the README's recipe trains every built-in offline method
    rehearse(
        shape,
        model,
        pickapic_v2_dir,
        out,
        scorer_locations,
        methods,
        *vae,
        "--suites",
        f"pickapic-test:{pickapic_v2_dir},hpdv2:{hpdv2_dir}",
    )

    # DRO trained on the top 10 by HPSv2, made by the data step through the scorer registry.
    experts = out / "data" / "experts-hpsv2-top10"
    recipe = json.loads((experts / "experts.json").read_text())
    assert recipe["scorer"] == "hpsv2" and recipe["n"] == 10 and recipe["split"] == "train"
    rows = [json.loads(line) for line in (experts / "experts.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    # On SD1.5, SmPO started from the UNet SFT trained first on the same pairs; on SDXL its recipe
    # starts from the base.
    smpo_state = json.loads((out / "models" / "smpo" / "final" / "trainer_state.json").read_text())
    sft = out / "models" / "sft" / "final" / "unet"
    init_unet = smpo_state["config"]["init_unet"]  # recorded by path and content (harness.results.identity)
    assert (init_unet["path"] if init_unet else None) == (str(sft.resolve()) if shape == "sd15" else None)
    assert smpo_state["config"]["pair_scorer"] == "pickscore-cosine"
    dro_state = json.loads((out / "models" / "dro" / "final" / "trainer_state.json").read_text())
    assert dro_state["config"]["master_weights"] == "bf16" and dro_state["config"]["ema_decay"] == 0.9999
    # The public code's quirks, trained through (docs/methods.md): AdamW (on SDXL too) per operation in bf16,
    # no clipping, every trajectory on row 0's levels.
    assert {k: dro_state["config"][k] for k in ("optimizer", "adamw_fused", "max_grad_norm", "per_row_sigmas")} == {
        "optimizer": "adamw",
        "adamw_fused": False,
        "max_grad_norm": None,
        "per_row_sigmas": False,
    }

    board = harness_main("leaderboard", "--out", str(out), "--format", "json")
    assert board.returncode == 0, board.stderr
    leaderboard = json.loads(board.stdout)
    cells = {(r["method"], r["suite"], r["metric"]): r for r in leaderboard}
    for method in ("base", *methods):
        for suite in ("pickapic-test", "hpdv2"):
            for metric in SCORERS:
                assert (method, suite, metric) in cells, (method, suite, metric)
    # The guard: a gain on the signal a method was trained on is marked, and nothing else.
    marked = {(method, metric) for (method, _, metric), row in cells.items() if row["trained_on_signal"]}
    assert marked == {("dro", "hpsv2"), ("dro", "hpsv2.1"), ("smpo", "pickscore")}


@pytest.mark.slow
def test_sd35_recipes_run_end_to_end_offline(tmp_path, tiny_sd35_dir, pickapic_v2_dir, scorer_locations):
    """Reduced (the README's command, two of its methods): the recipes the sd35 preset adds (DPO's LoRA at 512 px, after flow_grpo; SmPO started from
    SFT), evaluated at 1024 px with the flow-matching sampler on one suite by one scorer.  Every method on
    both suites and six scorers passed too, in 275 s on a busy machine (too long for the suite)."""
    out = tmp_path / "run"
    assert sorted(readme_methods("sd35")) == BUILT_IN
    rehearse(
        "sd35",
        tiny_sd35_dir,
        pickapic_v2_dir,
        out,
        scorer_locations,
        ("dpo", "smpo"),
        "--suites",
        f"pickapic-test:{pickapic_v2_dir}",
        "--scorers",
        "pickscore",
    )
    models = out / "models"
    dpo = json.loads((models / "dpo" / "final" / "trainer_state.json").read_text())["config"]
    assert (dpo["lora_rank"], dpo["lora_alpha"], dpo["beta"], dpo["resolution"]) == (32, 64.0, 100.0, 512)
    assert dpo["mixed_precision"] == "bf16" and dpo["gradient_checkpointing"] is True  # the preset's
    assert (models / "dpo" / "final" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    smpo = json.loads((models / "smpo" / "final" / "trainer_state.json").read_text())["config"]
    assert (
        smpo["init_unet"]["path"] == str((models / "sft" / "final" / "unet").resolve()) and smpo["resolution"] == 1024
    )
    manifest = out / "images" / "dpo" / "pickapic-test" / "manifest.jsonl"
    row = json.loads(manifest.read_text().splitlines()[0])
    assert (row["scheduler"], row["height"], row["guidance_scale"]) == ("FlowMatchEulerDiscreteScheduler", 1024, 4.5)

    board = harness_main("leaderboard", "--out", str(out), "--format", "json")
    assert board.returncode == 0, board.stderr
    cells = {(r["method"], r["metric"]) for r in json.loads(board.stdout)}
    assert cells == {(method, "pickscore") for method in ("base", "dpo", "smpo")}
