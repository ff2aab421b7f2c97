"""The reward-hacking report (harness.results.hacking) and in-prompt diversity (harness.results.diversity)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.api.registry import PRESETS, SCORERS
from harness.api.scorer import Scorer
from harness.cli.output import print_hacking
from harness.evaluation.evaluate import Protocol, record_diversity
from harness.plan.presets import get_preset
from harness.results.diversity import diversity_deltas, mean_pairwise_distance, prompt_diversity
from harness.results.experiments import parse_experiments
from harness.results.hacking import FINDINGS, hacking_report, load_hacking, scorer_families
from harness.results.layout import ResultsDir
from harness.results.stats import bootstrap_mean_ci
from harness.results.store import Store
from support.cli import harness_main
from support.results_fixture import DIVERSITY, build_results_dir
from toyworld import rewards
from toyworld.grammar import all_scenes
from toyworld.render import from_pil, render, to_pil


def row(method: str, metric: str, delta: float | None, low: float | None, high: float | None, **more) -> dict:
    """A leaderboard row of the fields the report reads."""
    return {
        "method": method,
        "suite": "s",
        "metric": metric,
        "metric_version": "1",
        "higher_is_better": more.get("higher", True),
        "delta_vs_base": delta,
        "delta_ci_low": low,
        "delta_ci_high": high,
        "trained_on_signal": more.get("trained", False),
    }


GAIN, FLAT, LOSS, NOISY = (0.1, 0.05, 0.15), (0.0, -0.02, 0.02), (-0.1, -0.15, -0.05), (0.03, -0.01, 0.07)
FAMILIES = {"q": "q", "f": "f", "exact": "exact", "hps": "hps", "hps.1": "hps", "err": "err"}


def report_of(*rows: dict) -> dict[str, tuple[bool, str, list[tuple[str, str]]]]:
    """method -> (flagged, finding, [(role, metric)])."""
    out: dict = {}
    for r in hacking_report([row("base", "q", None, None, None), *rows], families=FAMILIES):
        flagged, finding, parts = out.setdefault(r["method"], (r["flagged"], r["finding"], []))
        parts.append((r["role"], r["metric"]))
    return out


def test_flagged_when_a_significant_trained_on_gain_meets_no_held_out_gain_or_a_held_out_loss() -> None:
    report = report_of(
        row("hacked", "q", *GAIN, trained=True),
        row("hacked", "exact", *FLAT),
        row("worse", "q", *GAIN, trained=True),
        row("worse", "exact", *LOSS),
        row("honest", "q", *GAIN, trained=True),
        row("honest", "exact", *FLAT),
        row("honest", "f", *GAIN),
        row("noisy", "q", *GAIN, trained=True),
        row("noisy", "exact", *NOISY),
        row("mixed", "q", *GAIN, trained=True),
        row("mixed", "exact", *LOSS),
        row("mixed", "f", *GAIN),
        row("flat", "q", *FLAT, trained=True),
        row("flat", "exact", *FLAT),
        row("human", "exact", *FLAT),
        row("alone", "q", *GAIN, trained=True),
    )
    assert {m: (flagged, finding) for m, (flagged, finding, _) in report.items()} == {
        "hacked": (True, FINDINGS["flagged"]),
        "worse": (True, FINDINGS["held-out-loss"]),
        "honest": (False, FINDINGS["held"]),
        "noisy": (False, FINDINGS["unconfirmed"]),
        "mixed": (True, FINDINGS["held-out-loss"]),
        "flat": (False, FINDINGS["no-gain"]),
        "human": (False, FINDINGS["no-signal"]),
        "alone": (False, FINDINGS["no-held-out"]),
    }
    assert report["honest"][2] == [("trained-on", "q"), ("held-out", "exact"), ("held-out", "f")]


def test_held_out_means_another_family_and_follows_the_metrics_direction() -> None:
    report = report_of(
        row("m", "hps", *GAIN, trained=True),
        row("m", "hps.1", *FLAT),  # the trained-on signal's own family under another name: on neither side
        row("m", "err", *LOSS, higher=False),  # an error that falls: a held-out gain
    )
    flagged, finding, parts = report["m"]
    assert parts == [("trained-on", "hps"), ("held-out", "err")]
    assert (flagged, finding) == (False, FINDINGS["held"])
    # The same error rising is a held-out loss: flagged; falling a little, an unconfirmed gain.
    assert report_of(row("m", "hps", *GAIN, trained=True), row("m", "err", *GAIN, higher=False))["m"][:2] == (
        True,
        FINDINGS["held-out-loss"],
    )
    noisy_fall = (-0.03, -0.07, 0.01)
    assert (
        report_of(row("m", "hps", *GAIN, trained=True), row("m", "err", *noisy_fall, higher=False))["m"][1]
        == (FINDINGS["unconfirmed"])
    )


def test_a_single_prompts_missing_ci_is_no_significant_gain() -> None:
    assert (
        report_of(row("m", "q", 0.3, None, None, trained=True), row("m", "exact", *FLAT))["m"][1] == FINDINGS["no-gain"]
    )


def test_families_come_from_the_registered_scorers() -> None:
    assert scorer_families(["hpsv2", "hpsv2.1", "pickscore", "not-a-scorer"]) == {
        "hpsv2": "hpsv2",
        "hpsv2.1": "hpsv2",
        "pickscore": "pickscore",
        "not-a-scorer": "not-a-scorer",
    }


def test_mean_pairwise_distance_is_the_mean_cosine_distance_over_pairs() -> None:
    vectors = np.random.default_rng(3).normal(size=(5, 7))
    vectors[2] = 0.0  # nothing read: orthogonal to everything

    def cosine(a, b) -> float:
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b)) / (na * nb)

    expected = [1 - cosine(a, b) for a, b in itertools.combinations(vectors.tolist(), 2)]
    assert mean_pairwise_distance(vectors) == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    assert mean_pairwise_distance(np.ones((3, 4))) == pytest.approx(0.0, abs=1e-12)  # one picture k times
    assert math.isnan(mean_pairwise_distance(vectors[:1]))
    rows = prompt_diversity(["a", "b", "a", "c", "b"], vectors.tolist())
    assert [(r["prompt_id"], r["n_images"]) for r in rows] == [("a", 2), ("b", 2)]  # c's one image has no pair
    assert rows[1]["value"] == pytest.approx(1 - cosine(vectors[1], vectors[4]))


def test_diversity_delta_is_paired_by_prompt_with_a_ci_over_prompts() -> None:
    rng = np.random.default_rng(0)
    base = pd.DataFrame(
        {"method": "base", "prompt_id": [f"p{i}" for i in range(12)], "value": rng.uniform(0.2, 0.4, 12)}
    )
    dro = base.assign(method="dro", value=base["value"] - 0.1 + rng.normal(0, 0.01, 12)).iloc[2:]  # 2 prompts short
    frame = pd.concat([base, dro]).assign(suite="s", embedder="clip", version="v1")
    (delta,) = diversity_deltas(frame)
    diff = dro.set_index("prompt_id")["value"] - base.set_index("prompt_id")["value"].loc[dro["prompt_id"]]
    assert delta["n_prompts"] == 10 and delta["delta"] == pytest.approx(diff.mean())
    assert (delta["delta_ci_low"], delta["delta_ci_high"]) == bootstrap_mean_ci(diff.to_numpy(), diff.index.to_numpy())
    assert delta["delta_ci_high"] < 0 and delta["verdict"] == "worse than base"


def test_evaluation_records_diversity_in_the_presets_embedding_space(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path)
    scenes = all_scenes()
    # Prompt p0: one picture twice (no diversity); p1: two different scenes.
    pictures = {"p0": [scenes[0], scenes[0]], "p1": [scenes[0], scenes[40]]}
    rows = []
    for prompt_id, shown in pictures.items():
        for j, scene in enumerate(shown):
            path = results.images("base", "toy-seen") / f"{prompt_id}_{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            to_pil(render(scene)).save(path)
            rows.append({"prompt_id": prompt_id, "image_index": j, "path": path.name})
    protocol = Protocol.of(get_preset("toy"), suites=["toy-seen"], scorers=["toy-fidelity"])
    with Store(results.db) as store:
        run_id = store.get_or_create_run("base", method="base", preset="toy", base_model="toy", config={})
        record_diversity("base", run_id, {"toy-seen": rows}, protocol, results, store)
        stored = store.diversity_frame().set_index("prompt_id")
    # As stored: 8-bit PNGs.
    features = [rewards.reading_features(rewards.read(from_pil(to_pil(render(s))))) for s in pictures["p1"]]
    cosine = features[0] @ features[1] / (np.linalg.norm(features[0]) * np.linalg.norm(features[1]))
    assert stored.loc["p0", "value"] == pytest.approx(0.0, abs=1e-12)
    assert stored.loc["p1", "value"] == pytest.approx(1 - cosine) and stored.loc["p1", "value"] > 0.1
    assert set(stored["embedder"]) == {"toy-fidelity"} and set(stored["n_images"]) == {2}

    # A protocol that does not score with the embedder measures no diversity (its weights need not be at hand).
    other = Protocol.of(get_preset("toy"), suites=["toy-seen"], scorers=["toy-exact"])
    with Store(results.db) as store:
        record_diversity("base", run_id, {"toy-seen": rows[:2]}, other, results, store)
        assert store.diversity_frame()["n_images"].sum() == 4


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_results_dir(tmp_path_factory.mktemp("hacking"))


def test_leaderboard_hacking_prints_every_format_and_side_by_side(
    results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(results_dir)
    rows = load_hacking(parse_experiments([out]))
    dro = [(r["role"], r["metric"], r["verdict"]) for r in rows if (r["method"], r["suite"]) == ("dro", "toy-seen")]
    assert dro == [
        ("trained-on", "pickscore", "better than base"),
        ("held-out", "aesthetic", "better than base"),
        ("diversity", "diversity", "worse than base"),
    ]
    printed = {}
    for fmt in ("table", "json", "csv", "latex", "markdown"):
        print_hacking(rows, fmt)
        printed[fmt] = capsys.readouterr().out
    assert "dro / toy-seen: " + FINDINGS["held"] in printed["table"]
    assert json.loads(printed["json"]) == rows
    assert list(csv.DictReader(io.StringIO(printed["csv"])))[-1]["finding"] == rows[-1]["finding"]
    assert "\\begin{tabular}" in printed["latex"] and "| dro | toy-seen | diversity |" in printed["markdown"]
    # Two experiments through the command: each against its own base, diversity included.
    both = json.loads(
        harness_main("leaderboard", "--out", f"a={out}", "--out", f"b={out}", "--hacking", "--format", "json").stdout
    )
    assert [r for r in both if r["method"].startswith("b/")] == [{**r, "method": "b/" + r["method"]} for r in rows]
    assert [r["delta"] for r in both if r["role"] == "diversity" and r["method"] == "a/dro"] == pytest.approx(
        [DIVERSITY["dro"] - DIVERSITY["base"]] * 2
    )
    refused = harness_main("leaderboard", "--out", out, "--hacking", "--by", "category")
    assert refused.returncode == 2 and "--hacking prints its own table" in refused.stderr


def test_every_presets_diversity_embedder_gives_embeddings() -> None:
    embedders = {name: PRESETS.get(name)().diversity_embedder for name in PRESETS.names()}
    assert embedders["sd15"] == "clip" and embedders["toy"] == "toy-fidelity"
    for name, embedder in embedders.items():
        if embedder is not None:
            assert SCORERS.get(embedder).embed is not Scorer.embed, f"{name}: {embedder} gives no embeddings"
