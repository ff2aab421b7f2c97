"""`harness evaluate` (any checkpoint into a results directory) and `harness score` (images made
elsewhere) end to end, and a lower-is-better metric through the store, the statistics, the
leaderboard and the dashboard."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli.output import format_table
from harness.results.stats import LOWER_MARK, LOWER_NOTE, paired_comparison, win_rate_matrix
from harness.results.stats import leaderboard as statistics
from harness.run import leaderboard
from support.cli import harness_main

PLUGIN = Path(__file__).resolve().parent / "plugins" / "toy_error.py"


def _runs_rows(out: Path, method: str) -> dict:
    """{(suite, prompt_id, image_index): (seed, sha256, {(scorer, version): value})} of one run."""
    db = sqlite3.connect(out / "results.db")
    rows = db.execute(
        "SELECT i.suite, i.prompt_id, i.image_index, i.seed, i.sha256, s.scorer, s.version, s.value "
        "FROM images i JOIN runs r USING (run_id) JOIN scores s USING (image_id) WHERE r.method = ?",
        (method,),
    ).fetchall()
    db.close()
    table: dict = {}
    for suite, prompt_id, index, seed, sha256, scorer, version, value in rows:
        table.setdefault((suite, prompt_id, index), (seed, sha256, {}))[2][(scorer, version)] = value
    return table


def _board(rows: list[dict], method: str) -> dict:
    """A method's leaderboard rows by (suite, metric), without the fields that name the run."""
    return {
        (r["suite"], r["metric"]): {k: v for k, v in r.items() if k not in ("method", "trained_on_signal")}
        for r in rows
        if r["method"] == method
    }


def test_evaluating_a_runs_trained_unet_gives_the_runs_own_images_and_scores(tiny_run_dir, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(tiny_run_dir, out)
    result = harness_main(
        "evaluate",
        "--model",
        "tiny",
        "--unet",
        str(out / "models" / "dpo" / "final" / "unet"),
        "--name",
        "dpo-again",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "base: not evaluated" not in result.stdout  # the run's base has every suite and scorer already

    again, trained = _runs_rows(out, "dpo-again"), _runs_rows(out, "dpo")
    assert again and again == trained  # the same images (seeds, bytes) and scores
    assert {key[0] for key in again} == {"toy-seen", "toy-unseen"}
    assert all(
        (out / "images" / "dpo-again" / suite / "manifest.jsonl").is_file() for suite in ("toy-seen", "toy-unseen")
    )
    rows = leaderboard(out)
    assert _board(rows, "dpo-again") == _board(rows, "dpo")  # Δ and win rates against the run's base included


@pytest.fixture(scope="module")
def lora_training(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """LoRA adapters on the tiny UNet, written by what `harness train` writes them with
    (``harness.train.export``): final/lora, and the merged final/unet beside it.  Rank 4 and alpha 8
    (a scale of 2); B drawn at random, where training would have moved it from zero."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from harness.models.families import SD15
    from harness.train.export import export_unet

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    final = tmp_path_factory.mktemp("lora-training") / "final"
    export_unet(unet, final / "unet", SD15)
    return final


def test_lora_adapters_load_as_the_merged_unet_written_beside_them(lora_training, tiny_model_dir):
    from harness.evaluation.evaluate import Checkpoint, Protocol, load_checkpoint
    from harness.plan.presets import get_preset

    protocol = Protocol.of(get_preset("tiny"))
    model = str(tiny_model_dir)
    adapted = load_checkpoint(Checkpoint(model, lora=str(lora_training / "lora")), protocol).unet.state_dict()
    merged = load_checkpoint(Checkpoint(model, unet=str(lora_training / "unet")), protocol).unet.state_dict()
    base = load_checkpoint(Checkpoint(model), protocol).unet.state_dict()
    fused = {key.replace(".base_layer", ""): value for key, value in adapted.items() if ".lora_" not in key}
    assert fused.keys() == merged.keys()
    assert [key for key in merged if not torch.equal(fused[key], merged[key])] == []
    assert any(not torch.equal(merged[key], base[key]) for key in merged)  # the adapters do change the UNet


def test_lora_adapters_into_a_new_directory_evaluate_the_base_too_and_a_rerun_resumes(
    lora_training, tiny_model_dir, tmp_path, capsys
):
    """The command line's own entry point, ``harness.cli.main``, called directly."""
    from harness.cli import main

    out = tmp_path / "results"
    command = [
        "evaluate",
        "--model",
        str(tiny_model_dir),
        "--lora",
        str(lora_training / "lora"),
        "--preset",
        "tiny",
        "--suites",
        "toy-seen",
        "--name",
        "lora",
        "--out",
        str(out),
    ]
    assert main(command) == 0
    assert "== base: not evaluated on toy-seen" in capsys.readouterr().out

    rows = [row for row in leaderboard(out) if row["method"] == "lora"]
    assert {row["metric"] for row in rows} == {"toy-fidelity", "toy-quality"}
    assert all(row["delta_vs_base"] is not None and row["win_rate_vs_base"] is not None for row in rows)
    adapted, base = _runs_rows(out, "lora"), _runs_rows(out, "base")
    assert adapted.keys() == base.keys()
    assert [adapted[key][0] for key in adapted] == [base[key][0] for key in adapted]  # the same seeds
    assert any(adapted[key][1] != base[key][1] for key in adapted)  # other pictures

    files = {path: path.stat().st_mtime_ns for path in (out / "images").rglob("*.png")}
    assert main(command) == 0
    assert "not evaluated" not in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in (out / "images").rglob("*.png")} == files  # nothing redrawn
    assert _runs_rows(out, "lora") == adapted and _runs_rows(out, "base") == base


def _draw_the_captions(manifest: Path, folder: Path) -> Path:
    """Images that show exactly what each caption says (the toy world's renderer), one per image of
    ``manifest``, at the same prompts and seeds; their manifest gives prompts by text only."""
    from toyworld.grammar import parse_caption
    from toyworld.render import render, to_pil

    folder.mkdir()
    lines = []
    for number, row in enumerate(json.loads(line) for line in manifest.read_text().splitlines()):
        to_pil(render(parse_caption(row["prompt"]))).save(folder / f"drawn-{number}.png")
        lines.append(
            json.dumps(
                {
                    "path": f"drawn-{number}.png",
                    "prompt": row["prompt"],
                    "image_index": row["image_index"],
                    "seed": row["seed"],
                }
            )
        )
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def test_scored_images_and_a_lower_is_better_metric_rank_the_better_model_first(tiny_run_dir, tmp_path):
    """The base's images of the tiny run (a `harness generate` output: its manifest) and pictures drawn to
    match their captions, scored with toy-fidelity and toy-error = 1 - toy-fidelity (lower is better).
    The drawn ones are better on both: on toy-error they must have the lower mean, win against the
    generated ones, and be the best of the column."""
    generated = tiny_run_dir / "images" / "base" / "toy-seen"
    drawn = _draw_the_captions(generated / "manifest.jsonl", tmp_path / "drawn")
    out = tmp_path / "results"
    score = (
        "--plugin",
        str(PLUGIN),
        "score",
        "--prompts",
        "toy-seen",
        "--scorers",
        "toy-fidelity,toy-error",
        "--out",
        str(out),
    )
    for images, name in ((generated, "generated"), (drawn, "drawn")):
        result = harness_main(*score, "--images", str(images), "--name", name)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The generated images keep their seeds, bytes and scores: what the tiny run's base has.
    scored, run = _runs_rows(out, "generated"), _runs_rows(tiny_run_dir, "base")
    assert scored.keys() == {key for key in run if key[0] == "toy-seen"}
    for key, (seed, sha256, values) in scored.items():
        assert (seed, sha256) == run[key][:2]
        assert values[("toy-fidelity", "1")] == run[key][2][("toy-fidelity", "1")]
        assert values[("toy-error", "1")] == pytest.approx(1 - run[key][2][("toy-fidelity", "1")])

    rows = {(r["method"], r["metric"]): r for r in leaderboard(out, base="generated")}
    error, fidelity = rows[("drawn", "toy-error")], rows[("drawn", "toy-fidelity")]
    assert error["higher_is_better"] is False and fidelity["higher_is_better"] is True
    assert error["mean"] < rows[("generated", "toy-error")]["mean"] and error["delta_vs_base"] < 0
    assert error["win_rate_vs_base"] > 0.5
    assert error["win_rate_vs_base"] == fidelity["win_rate_vs_base"]  # one signal, read both ways

    from dashboard.data import best_cells, column_directions, leaderboard_frame, load_results, overview_table

    results_frames = load_results(out)
    board = leaderboard_frame(statistics(results_frames.scores, base="generated"))
    overview = overview_table(board, ["generated", "drawn"])
    best = best_cells(overview, column_directions(board))
    column = f"toy-seen · toy-error (1) {LOWER_MARK}"
    assert overview.loc[best[column], "method"].tolist() == ["drawn"]

    table = format_table(leaderboard(out, base="generated"))
    assert f"toy-error {LOWER_MARK}" in table and table.endswith(LOWER_NOTE)
    assert f"toy-error {LOWER_MARK}" in result.stdout  # what `harness score` printed


def test_win_rates_and_deltas_follow_the_metrics_direction():
    """On a lower-is-better metric a win is a lower median; Δ stays the plain difference of the means."""
    rows = []
    for method, error in (("base", 0.5), ("better", 0.2)):
        for prompt in range(4):
            for index in range(2):
                rows.append(
                    {
                        "method": method,
                        "suite": "s",
                        "split": "seen",
                        "metric": "err",
                        "metric_version": "1",
                        "higher_is_better": False,
                        "prompt_id": f"p{prompt}",
                        "category": "",
                        "image_index": index,
                        "seed": prompt + 4 * index,
                        "value": error + 0.01 * prompt,
                    }
                )
    scores = pd.DataFrame(rows)
    better = next(row for row in statistics(scores) if row["method"] == "better")
    assert better["higher_is_better"] is False
    assert better["win_rate_vs_base"] == 1.0 and better["delta_vs_base"] == pytest.approx(-0.3)
    assert paired_comparison(scores, "base", "better", "err", "s")["win_rate"] == 0.0
    assert win_rate_matrix(scores, "err", "s").loc["better", "base"] == 1.0
    with pytest.raises(Exception, match="both higher- and lower-is-better"):
        statistics(scores.assign(higher_is_better=scores.index % 2 == 0))
