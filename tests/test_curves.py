"""Metrics over training (`harness run --eval-every N`): the curve ends on the final number."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from harness.errors import HarnessError
from harness.evaluation.curves import CURVE_EVENTS, curve_points, write_tensorboard
from harness.plan.planner import RunOptions, validate
from harness.plan.presets import get_preset
from harness.results.store import Store
from harness.run import run

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


@pytest.mark.slow  # a real harness run
def test_the_curve_ends_on_the_final_number_in_the_store_tensorboard_and_dashboard(tmp_path, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    rows = run(
        RunOptions(
            methods=["dpo"],
            out=out,
            preset="tiny",
            suites=["toy-seen", "toy-unseen"],
            max_prompts=2,
            images_per_prompt=1,
            eval_every=1,
            eval_suites=["toy-seen"],
            jobs=1,
        )
    )
    printed = capsys.readouterr().out
    # The cost, said before anything runs: the tiny preset trains 2 steps, so 2 points of 2 prompts x 1 image.
    assert "--eval-every 1: 2 more evaluations (dpo 2) of 2 images each on toy-seen: 4 images" in printed
    assert printed.index("--eval-every 1") < printed.index("base model")
    assert {r["method"] for r in rows} == {"base", "dpo"}  # the intermediate UNets are no leaderboard rows

    with Store(out, readonly=True) as store:
        points = curve_points(store.scores_frame())
        images = store.images_frame().set_index(["method", "suite", "prompt_id"])["sha256"]
    assert sorted(set(zip(points["method"], points["step"], points["suite"]))) == [
        ("dpo", 1, "toy-seen"),
        ("dpo", 2, "toy-seen"),
    ]
    final = {(r["suite"], r["metric"]): r for r in rows if r["method"] == "dpo"}
    for point in points[points["step"] == 2].itertuples():
        # Evaluated anew from the final UNet, with the final evaluation's prompts, seeds, sampler and scorers.
        assert (point.mean, point.ci_low, point.ci_high) == tuple(
            final[point.suite, point.metric][k] for k in ("mean", "ci_low", "ci_high")
        )
        assert point.delta_vs_base == final[point.suite, point.metric]["delta_vs_base"]
    seen = images.xs("toy-seen", level="suite")
    assert seen["dpo@2"].equals(seen["dpo"]) and not seen["dpo@1"].equals(seen["dpo"])

    events = EventAccumulator(str(out / "models" / "dpo" / "tensorboard")).Reload()
    for metric in points["metric"].unique():
        curve = points[points["metric"] == metric]
        logged = events.Scalars(f"eval/toy-seen/{metric}")
        assert [e.step for e in logged] == curve["step"].tolist()
        assert [e.value for e in logged] == pytest.approx(curve["mean"].tolist())  # float32 in TensorBoard

    monkeypatch.setenv("HARNESS_OUT", str(out))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.sidebar.radio(key="page").set_value("Curves").run()
    assert not at.exception, at.exception
    label = at.selectbox(key="curves_metric").value
    metric = label.split(" ")[0]
    (chart,) = at.get("vega_lite_chart")
    drawn = convert_arrow_bytes_to_pandas_df(chart.proto.datasets[0].data.data)
    expected = points[points["metric"] == metric]
    assert drawn["step"].tolist() == expected["step"].tolist()
    for column in ("mean", "ci_low", "ci_high"):
        assert drawn[column].tolist() == expected[column].tolist()
    table = at.dataframe[0].value
    assert table["step"].tolist() == [1, 2] and table["mean"].iloc[-1] == final["toy-seen", metric]["mean"]


def test_eval_every_options_are_checked_before_anything_runs(tmp_path):
    tiny = get_preset("tiny")
    with pytest.raises(HarnessError, match="--pretrained trains nothing"):
        validate(RunOptions(methods=["dpo"], out=tmp_path, preset="tiny", pretrained=True, eval_every=1), tiny)
    with pytest.raises(HarnessError, match="--eval-suites parti: not a suite of this run"):
        validate(RunOptions(methods=["dpo"], out=tmp_path, preset="tiny", eval_every=1, eval_suites=["parti"]), tiny)
    with pytest.raises(HarnessError, match="give --eval-every N too"):
        validate(RunOptions(methods=["dpo"], out=tmp_path, preset="tiny", eval_suites=["toy-seen"]), tiny)
    with pytest.raises(HarnessError, match="--eval-every must be at least 1"):
        validate(RunOptions(methods=["dpo"], out=tmp_path, preset="tiny", eval_every=0), tiny)


def test_a_rerun_leaves_one_curve_events_file_and_new_points_replace_it(tmp_path):
    """`--eval-every` reruns write the curve again: TensorBoard must still find each point once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def points(means: list[float]) -> pd.DataFrame:
        rows = [("dpo", step, mean, mean - 0.5, mean + 0.5) for step, mean in enumerate(means, 1)]
        rows.append(("kto", 1, 9.0, 8.0, 10.0))  # another method's point: not in dpo's folder
        frame = pd.DataFrame(rows, columns=["method", "step", "mean", "ci_low", "ci_high"])
        return frame.assign(suite="toy-seen", metric="toy-quality")

    def curve() -> tuple[Path, dict[str, list[tuple[int, float]]]]:
        (events,) = (tmp_path / "tensorboard").glob(CURVE_EVENTS + "*")
        accumulated = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
        tags = accumulated.Tags()["scalars"]
        return events, {tag: [(e.step, e.value) for e in accumulated.Scalars(tag)] for tag in tags}

    training = tmp_path / "tensorboard" / "events.out.tfevents.1.host.1.0"  # the trainer's file, left alone
    training.parent.mkdir()
    training.write_bytes(b"")
    write_tensorboard(points([1.0, 2.0]), "dpo", tmp_path / "tensorboard")
    first, scalars = curve()
    assert scalars == {
        "eval/toy-seen/toy-quality": [(1, 1.0), (2, 2.0)],
        "eval/toy-seen/toy-quality/ci_low": [(1, 0.5), (2, 1.5)],
        "eval/toy-seen/toy-quality/ci_high": [(1, 1.5), (2, 2.5)],
    }
    stamp = first.stat().st_mtime_ns
    write_tensorboard(points([1.0, 2.0]), "dpo", tmp_path / "tensorboard")  # a rerun: found, not rewritten
    assert curve() == (first, scalars) and first.stat().st_mtime_ns == stamp
    write_tensorboard(points([1.0, 3.0]), "dpo", tmp_path / "tensorboard")  # other points replace the curve
    assert curve()[1]["eval/toy-seen/toy-quality"] == [(1, 1.0), (2, 3.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tensorboard"] and training.exists()
