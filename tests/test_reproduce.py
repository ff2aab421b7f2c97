"""`harness reproduce`: the published tables as data, the comparison with them, the missing-weights
message, and one whole reproduction on tiny stand-ins (a tiny pipeline, tiny local "published" UNets,
the toy rewards, stand-in tables)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import harness_cli
from harness.api.registry import SCORERS, SUITES
from harness.cli.options import parse_unets
from harness.errors import HarnessError
from harness.plan.planner import RunOptions, validate
from harness.plan.presets import get_preset, published_weights
from harness.results.published import DRO_SD15
from harness.results.reproduce import MISSING, ci_units, compare, format_report, reproduce, version_flag
from harness.results.store import Store
from harness.run import leaderboard
from support.cli import harness_main
from support.results_fixture import write_png

PROMPTS = 8
IMAGES = 2
CUSTOM_HPS = "v2.0+custom-0123456789"


def test_published_data_names_our_scorers_suites_and_checkpoints():
    preset = get_preset(DRO_SD15.preset)
    for metric in DRO_SD15.metrics:  # the paper's weights are our scorers' official ones
        assert SCORERS.get(metric.scorer).version == metric.version
    assert DRO_SD15.metric("hpsv2").version == "v2.0"
    # Our preprocessing revision (hpsv2's +pre1) is no other weights; a local checkpoint still is.
    assert version_flag(DRO_SD15.metric("hpsv2"), "v2.0+pre1") == ""
    assert "non-official" in version_flag(DRO_SD15.metric("hpsv2"), "v2.0+pre1+custom-0123456789")
    for suite in DRO_SD15.suites:
        SUITES.get(suite)
        assert suite in preset.suites
    for row in DRO_SD15.rows:
        assert {(s, m) for s in row.means for m in row.means[s]} == {
            (s, m.scorer) for s in DRO_SD15.suites for m in DRO_SD15.metrics
        }
        if row.method == "base":
            assert row.checkpoint == preset.base_model
        elif row.method is not None:
            assert published_weights(preset.name)[row.method].location == row.checkpoint
    assert "inferred" in DRO_SD15.row_of("dro").mapping and DRO_SD15.row_of("dro").label == "DRO (HPSv2 experts)"
    assert DRO_SD15.row_of("smpo") is None
    assert DRO_SD15.win_rates[("dro", "pickapic-test", "pickscore")] == 0.878


def test_ci_units_use_the_bound_on_the_papers_side():
    # An asymmetric CI: 9 below the mean 10, 12 above it.
    assert ci_units(10.0, 9.0, 12.0, 11.5) == pytest.approx(-0.75)
    assert ci_units(10.0, 9.0, 12.0, 8.5) == pytest.approx(1.5)
    assert ci_units(10.0, 9.0, 12.0, 12.0) == pytest.approx(-1.0)
    assert ci_units(10.0, 9.0, 12.0, 9.0) == pytest.approx(1.0)
    assert ci_units(10.0, 10.0, 10.0, 10.0) == 0.0 and ci_units(10.0, 10.0, 10.0, 11.0) is None
    assert ci_units(10.0, None, None, 11.0) is None  # one prompt: no interval, so no unit


# Offsets of each method's scores from its paper row: base agrees, dpo is above, dro below.
OFFSETS = {"base": 0.0, "dpo": 1.0, "dro": -1.0}


def build_results(out: Path) -> Path:
    """A results directory as `harness run --pretrained` writes it, through the Store API: pickscore
    (official) and hpsv2 (custom weights) on both suites; the other paper metrics never scored."""
    with Store(out) as store:
        for method, offset in OFFSETS.items():
            run_id = store.get_or_create_run(method, method=method, preset="sd15", base_model="sd15", config={})
            paper = DRO_SD15.row_of(method).means
            for suite, split in (("pickapic-test", "seen"), ("hpdv2", "unseen")):
                rng = random.Random(f"{method}/{suite}")
                images, scores = [], []
                for k in range(PROMPTS):
                    for j in range(IMAGES):
                        rel = f"images/{method}/{suite}/{k}_{j}.png"
                        images.append(
                            dict(
                                prompt_id=f"p{k}",
                                prompt=f"prompt {k}",
                                category="",
                                image_index=j,
                                seed=k + j * PROMPTS,
                                path=rel,
                                sha256=write_png(out / rel, k + j),
                            )
                        )
                        for scorer, version in (("pickscore", "v1"), ("hpsv2", CUSTOM_HPS)):
                            value = paper[suite][scorer] + offset + rng.uniform(-0.05, 0.05)
                            scores.append(
                                dict(
                                    prompt_id=f"p{k}",
                                    image_index=j,
                                    scorer=scorer,
                                    version=version,
                                    scale="100*cos",
                                    value=value,
                                )
                            )
                store.add_images(run_id, suite=suite, suite_version="v", split=split, rows=images)
                store.add_scores(run_id, suite=suite, rows=scores)
    return out


def test_comparison_places_ours_beside_the_paper(tmp_path):
    report = compare(leaderboard(build_results(tmp_path)), DRO_SD15, ["dpo", "dro"])

    assert len(report.means) == 3 * 2 * 5  # models x suites x metrics, each once
    by_key = {(c.method, c.suite, c.metric): c for c in report.means}
    for c in report.means:
        if c.metric in ("pickscore", "hpsv2"):
            assert c.n_prompts == PROMPTS and c.paper == DRO_SD15.row_of(c.method).means[c.suite][c.metric]
            assert c.diff == pytest.approx(c.ours - c.paper) and c.diff * c.z > 0
            assert (abs(c.z) <= 1) == (c.ci_low <= c.paper <= c.ci_high)
        else:  # never scored: shown, as missing
            assert c.ours is None and c.diff is None and c.z is None and c.flag == ""
    for suite in DRO_SD15.suites:
        assert abs(by_key[("base", suite, "pickscore")].z) <= 1  # agrees with the paper
        assert by_key[("dpo", suite, "pickscore")].z > 1  # ours 1.0 above, CI ~0.03 wide
        assert by_key[("dro", suite, "pickscore")].z < -1
        assert by_key[("dro", suite, "pickscore")].diff == pytest.approx(-1.0, abs=0.05)
    for c in report.means:  # the custom HPSv2 weights are flagged, the official PickScore is not
        if c.metric == "hpsv2":
            assert CUSTOM_HPS in c.flag and "non-official" in c.flag
        elif c.metric == "pickscore":
            assert c.flag == "" and c.version == "v1"

    wins = {c.metric: c for c in report.win_rates}
    assert set(wins) == {"pickscore", "aesthetic", "clip", "imagereward"}  # the paper's four
    assert wins["pickscore"].ours == 0.0 and wins["pickscore"].paper == 0.878  # dro is 1.0 below the base
    assert wins["pickscore"].z < -1 and wins["pickscore"].n_prompts == PROMPTS
    assert wins["aesthetic"].ours is None

    text = format_report(report)
    dpo_line = next(
        line for line in text.splitlines() if line.startswith("hpdv2") and "(dpo)" in line and "PickScore" in line
    )
    assert "21.30" in dpo_line and f"{by_key[('dpo', 'hpdv2', 'pickscore')].z:+.2f}" in dpo_line
    assert any(line.count(MISSING) >= 4 and "Aesthetic" in line for line in text.splitlines())
    assert f"! hpsv2 {CUSTOM_HPS}" in text and "inferred, not stated" in text
    assert json.loads(json.dumps(report.to_json(), allow_nan=False))["means"][0]["source"].startswith("Diffusion-DRO")


def test_unet_and_local_suite_options_are_checked(tmp_path, tiny_model_dir):
    sd15 = get_preset("sd15")
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"caption": "a red cube"}\n')
    unet = tmp_path / "dro-unet"
    unet.mkdir()
    (unet / "config.json").write_text("{}")
    validate(
        RunOptions(
            ["dro"],
            tmp_path / "out",
            "sd15",
            model=str(tiny_model_dir),
            pretrained=True,
            suites=[f"pickapic-test:{captions}"],
            unets={"dro": str(unet)},
        ),
        sd15,
    )
    with pytest.raises(HarnessError, match="use it with --pretrained"):
        validate(RunOptions(["dro"], tmp_path, "sd15", unets={"dro": str(tmp_path)}), sd15)
    with pytest.raises(HarnessError, match="not among the methods"):
        validate(RunOptions(["dpo"], tmp_path, "sd15", pretrained=True, unets={"dro": str(tmp_path)}), sd15)
    assert parse_unets(["dro=/data/dro", "dpo=mhdang/dpo-sd1.5-text2image-v1"]) == {
        "dro": "/data/dro",
        "dpo": "mhdang/dpo-sd1.5-text2image-v1",
    }
    with pytest.raises(HarnessError, match="--unet expects METHOD=DIR"):
        parse_unets(["/data/dro"])


def test_missing_weights_fail_in_one_line_before_anything_is_made(tmp_path):
    out = tmp_path / "out"
    result = harness_main("reproduce", "--preset", "sd15", "--out", str(out))  # HF_HUB_OFFLINE=1 (conftest)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "base model 'stable-diffusion-v1-5/stable-diffusion-v1-5' is not available" in lines[0]
    assert "`hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR`" in lines[0]
    assert "--model DIR" in lines[0]
    assert not out.exists()


def test_a_missing_published_unet_is_named_with_its_option(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    with pytest.raises(HarnessError) as error:
        reproduce(RunOptions([], out, "sd15", model=str(tiny_model_dir)))
    assert "dpo's published UNet 'mhdang/dpo-sd1.5-text2image-v1' is not available" in str(error.value)
    assert "--unet dpo=DIR" in str(error.value)
    assert not out.exists()


# --- One whole reproduction on tiny stand-ins --------------------------------------------------


def save_published_unet(tiny_model_dir: Path, folder: Path, shift: float) -> Path:
    """The tiny base's UNet, shifted, saved as `hf download REPO --local-dir folder` would (UNet in unet/)."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(shift)
    unet.save_pretrained(folder / "unet")
    return folder


@pytest.mark.slow
def test_reproduce_runs_local_checkpoints_and_prints_the_comparison(tmp_path, tiny_model_dir):
    """The tiny preset with stand-in tables (a plugin), dpo's "published" UNet from a local download."""
    download = save_published_unet(tiny_model_dir, tmp_path / "dpo-download", shift=0.01)
    out = tmp_path / "out"
    result = harness_cli(
        "--plugin",
        str(Path(__file__).parent / "plugins" / "standin_tables.py"),
        "reproduce",
        "--preset",
        "tiny",
        "--model",
        str(tiny_model_dir),
        "--unet",
        f"dpo={download}",
        "--out",
        str(out),
        "--scorers",
        "toy-fidelity,toy-quality",
        "--max-prompts",
        "2",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # the run's progress went to stderr
    assert "== base: generation" in result.stderr

    with Store(out, readonly=True) as store:
        runs = store.runs_frame().set_index("method")
    assert json.loads(runs.loc["dpo", "config"])["pretrained"]["path"] == str(download.resolve())  # and its content
    scored = [c for c in report["means"] if c["ours"] is not None]
    assert {(c["method"], c["suite"], c["metric"]) for c in scored} == {
        (m, s, t) for m in ("base", "dpo") for s in ("toy-seen", "toy-unseen") for t in ("toy-fidelity", "toy-quality")
    }
    for c in scored:
        assert c["n_prompts"] == 2 and 0 <= c["ours"] <= 1 and c["paper"] == (0.5 if c["method"] == "base" else 0.6)
        assert c["diff"] == pytest.approx(c["ours"] - c["paper"]) and c["diff"] * c["z"] > 0
        assert c["flag"] == ("" if c["metric"] == "toy-fidelity" else "toy-quality 1, the paper's is 0 (other weights)")
    assert all(c["ours"] is None for c in report["means"] if c["metric"] == "pickscore")  # not run: missing
    (win,) = report["win_rates"]
    assert win["ours"] is not None and win["paper"] == 0.7 and win["n_prompts"] == 2
