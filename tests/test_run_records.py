"""What `harness run` records about a run besides its scores: how many prompts of each unseen
suite its training captions contain, and what each run cost (CPU-hours here, on a CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from harness.evaluation.suites import get_suite
from harness.plan.planner import RunOptions
from harness.results.compute import JobClock, combine
from harness.results.store import Store
from harness.run import run
from support.cli import harness_main
from support.train_fixtures import write_pair_dir

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def test_the_toy_worlds_unseen_suite_has_no_training_caption(tiny_run_dir):
    with Store(tiny_run_dir, readonly=True) as store:
        overlaps = store.overlaps_frame()
    assert sorted(zip(overlaps["method"], overlaps["suite"], overlaps["n_overlap"])) == [
        ("base", "toy-unseen", 0),
        ("dpo", "toy-unseen", 0),
    ]


@pytest.mark.slow  # a real harness run
def test_a_run_whose_captions_hold_unseen_prompts_records_the_count_and_warns(tmp_path, capsys):
    unseen = get_suite("toy-unseen").prompts
    data = write_pair_dir(tmp_path / "data")
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    # Two of the suite's first two prompts, spelt differently; prompt 3 lies beyond --max-prompts 2.
    for row, caption in zip(rows, [unseen[0].prompt.upper() + "!", "  " + unseen[1].prompt + " ", unseen[3].prompt]):
        row["caption"] = caption
    (data / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tiny_training = {"max_steps": 1, "batch_size": 2, "warmup_steps": 0}
    run(
        RunOptions(
            methods=["dpo"],
            out=tmp_path / "out",
            preset="tiny",
            data=str(data),
            suites=["toy-seen", "toy-unseen"],
            max_prompts=2,
            images_per_prompt=1,
            overrides={"dpo": tiny_training},
            jobs=1,
        )
    )

    warnings = [line.strip() for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [f"warning: 2 prompts of unseen suite 'toy-unseen' appear in the training captions of {data}"]
    with Store(tmp_path / "out", readonly=True) as store:
        overlaps = store.overlaps_frame()
    # Every run of the comparison carries the count of each unseen suite; seen suites have none.
    assert sorted(zip(overlaps["method"], overlaps["suite"], overlaps["n_overlap"])) == [
        ("base", "toy-unseen", 2),
        ("dpo", "toy-unseen", 2),
    ]


def _spin(cpu_seconds: float) -> None:
    started = time.process_time()
    while time.process_time() - started < cpu_seconds:
        pass


def test_a_job_costs_its_cpu_time_on_a_cpu_and_its_wall_time_on_a_gpu():
    """A job that waits (for a core, for a file) uses no CPU meanwhile; on a GPU it holds the GPU."""
    cpu, gpu = JobClock(on_gpu=False), JobClock(on_gpu=True)
    started = time.perf_counter()
    time.sleep(0.5)
    _spin(0.3)
    wall = time.perf_counter() - started
    on_cpu, on_gpu = cpu.figures("eval"), gpu.figures("train")
    assert set(on_cpu) == {
        "cpu_hours",
        "eval_cpu_hours",
        "wall_s",
        "eval_wall_s",
        "peak_memory_mb",
        "eval_peak_memory_mb",
    }
    assert on_cpu["cpu_hours"] == on_cpu["eval_cpu_hours"] and on_cpu["wall_s"] == on_cpu["eval_wall_s"]
    assert 0.3 <= on_cpu["cpu_hours"] * 3600 < 0.5
    assert wall <= on_cpu["wall_s"] < wall + 0.1
    # No GPU here to measure the memory of: that figure is missing, not made up.
    assert set(on_gpu) == {"gpu_hours", "train_gpu_hours", "wall_s", "train_wall_s", "train_processes"}
    assert wall <= on_gpu["gpu_hours"] * 3600 < wall + 0.1 and on_gpu["train_processes"] == 1


def test_a_training_of_several_processes_costs_theirs():
    """A training of N processes holds N GPUs; on a CPU its cost is the CPU time of the processes it waited for."""
    cpu, gpu = JobClock(on_gpu=False, processes=2), JobClock(on_gpu=True, processes=2)
    started = time.perf_counter()
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    wall = time.perf_counter() - started
    on_cpu, on_gpu = cpu.figures("train"), gpu.figures("train")
    assert 0.3 <= on_cpu["cpu_hours"] * 3600 < wall + 0.1 and on_cpu["train_processes"] == 2
    assert 2 * wall <= on_gpu["gpu_hours"] * 3600 < 2 * (wall + 0.1)
    # Resumed with another count, a run shows the most it trained on; the hours add up.
    combined = combine(combine({}, on_gpu), {**on_gpu, "train_processes": 1})
    assert combined["train_processes"] == 2 and combined["gpu_hours"] == 2 * on_gpu["gpu_hours"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resets the peak resident set as Linux does")
def test_a_jobs_peak_memory_is_its_own_not_its_worker_processes():
    """A worker runs job after job: each job's peak starts from what the process holds when it starts."""
    big = JobClock(on_gpu=False)
    block = bytearray(256 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touched, so resident
    first = big.figures("eval")["peak_memory_mb"]
    del block
    second = JobClock(on_gpu=False).figures("eval")["peak_memory_mb"]
    assert first >= 256 and second < first - 200


def test_each_run_records_its_cpu_hours_and_the_dashboard_shows_them(tiny_run_dir, monkeypatch):
    with Store(tiny_run_dir, readonly=True) as store:
        runs = store.runs_frame().set_index("method")
    compute = {method: json.loads(runs.loc[method, "compute"]) for method in ("base", "dpo")}
    # On a CPU: CPU-hours, no GPU-hours; the base was only evaluated, dpo trained and evaluated.
    assert runs["gpu_hours"].isna().all()
    assert set(compute["base"]) >= {"cpu_hours", "eval_cpu_hours"} and "train_cpu_hours" not in compute["base"]
    dpo = compute["dpo"]
    assert dpo["train_cpu_hours"] > 0 and dpo["eval_cpu_hours"] > 0
    assert dpo["cpu_hours"] == pytest.approx(dpo["train_cpu_hours"] + dpo["eval_cpu_hours"])
    for method in ("base", "dpo"):
        assert runs.loc[method, "cpu_hours"] == compute[method]["cpu_hours"] > 0
    # Jobs ran one thread each, at most one per core, within the run's wall time.
    started = min(datetime.fromisoformat(t) for t in runs["started_at"])
    ended = max(datetime.fromisoformat(t) for t in runs["ended_at"])
    cores = len(os.sched_getaffinity(0))
    assert runs["cpu_hours"].sum() * 3600 <= ((ended - started).total_seconds() + 2) * cores

    monkeypatch.setenv("HARNESS_OUT", str(tiny_run_dir))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.sidebar.radio(key="page").set_value("Run details").run()
    assert not at.exception, at.exception
    shown = at.dataframe[0].value.set_index("method")
    assert shown.loc["dpo", "CPU-hours"] == f"{dpo['cpu_hours']:.4g}" and shown.loc["dpo", "GPU-hours"] == "–"
    assert (shown.loc["dpo", "training processes"], shown.loc["base", "training processes"]) == ("1", "–")


def test_each_run_has_its_own_times_and_figures_in_the_store_the_cli_and_the_dashboard(tiny_run_dir, monkeypatch):
    with Store(tiny_run_dir, readonly=True) as store:
        runs = store.runs_frame().set_index("method")
        checkpoints = store.checkpoints_frame().set_index("method")
    compute = {method: json.loads(runs.loc[method, "compute"]) for method in ("base", "dpo")}
    for method in ("base", "dpo"):
        run = runs.loc[method]
        started, ended = datetime.fromisoformat(run["started_at"]), datetime.fromisoformat(run["ended_at"])
        # Its own jobs' wall time, which (one job after another) fits between its own start and end
        # (times are stored to the second).
        assert 0 < run["wall_s"] <= (ended - started).total_seconds() + 2
        assert run["peak_memory_mb"] > 0 and run["status"] == "done"
    dpo = compute["dpo"]
    assert dpo["wall_s"] == pytest.approx(dpo["train_wall_s"] + dpo["eval_wall_s"])
    assert dpo["peak_memory_mb"] == max(dpo["train_peak_memory_mb"], dpo["eval_peak_memory_mb"])
    # dpo's training (its checkpoint) lies within dpo's own start and end.
    assert runs.loc["dpo", "started_at"] <= checkpoints.loc["dpo", "created_at"] <= runs.loc["dpo", "ended_at"]
    assert runs.loc["dpo", "unet_evals_per_sample"] > 0 and pd.isna(runs.loc["base", "unet_evals_per_sample"])

    result = harness_main("runs", "--out", str(tiny_run_dir))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split("  ")[:3] == ["run", "method", "status"] and header.endswith(
        "peak memory MiB  training processes  reward calls / sample  training data"
    )
    # run, method, status, started, ended, wall, CPU-hours, GPU-hours, UNet evals per sample, peak memory,
    # training processes, reward calls per sample, then what its training read (words: the rest of the line)
    printed = {row.split()[1]: row.split(maxsplit=12) for row in rows}
    assert printed["base"][4:] == [
        runs.loc["base", "ended_at"].removesuffix("+00:00"),
        f"{runs.loc['base', 'wall_s']:.1f}",
        f"{runs.loc['base', 'cpu_hours']:.4g}",
        "–",
        "–",
        f"{runs.loc['base', 'peak_memory_mb']:.0f}",
        "–",
        "–",
        "–",
    ]
    assert printed["dpo"][8] == f"{runs.loc['dpo', 'unet_evals_per_sample']:.4g}" and "None" not in result.stdout
    assert printed["dpo"][10] == "1" and printed["dpo"][11] == "0"  # an offline method's reward calls
    assert printed["dpo"][12] == compute["dpo"]["training_data"]
    # The toy world's data folder: its pairs and the experts made beside them.
    assert re.fullmatch(
        r"pairs \d+ read, \d+ ties? skipped, 0 unreadable; experts \d+ read, 0 unreadable", printed["dpo"][12]
    )

    monkeypatch.setenv("HARNESS_OUT", str(tiny_run_dir))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.sidebar.radio(key="page").set_value("Run details").run()
    assert not at.exception, at.exception
    # The same text as the CLI's: numbers as text, so a missing one shows as '–' in the browser too.
    cells = at.dataframe[0].value.set_index("method")
    assert cells.loc["base"].tolist()[1:] == printed["base"][2:] and cells.loc["dpo"].tolist()[1:] == printed["dpo"][2:]


@pytest.mark.slow  # a real harness run
def test_a_published_checkpoint_records_the_reward_its_training_used(tmp_path, tiny_model_dir):
    """--pretrained dro (the sd15 preset's released UNet, here a local stand-in): its experts were ranked by
    HPSv2, so that family is its training signal, recorded with the run and marked on the leaderboard."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square on the left\n")
    run(
        RunOptions(
            methods=["dro"],
            out=tmp_path / "out",
            preset="sd15",
            model=str(tiny_model_dir),
            pretrained=True,
            unets={"dro": str(tiny_model_dir / "unet")},
            suites=[f"file:{prompts}"],
            scorers=["toy-quality"],
            images_per_prompt=1,
            steps=1,
            jobs=1,
        )
    )
    with Store(tmp_path / "out", readonly=True) as store:
        signals = store.training_signals_frame()
    # The signal's family: both HPSv2 versions, native and official.
    assert sorted(zip(signals["method"], signals["metric"])) == [
        ("dro", name) for name in ("hpsv2", "hpsv2-official", "hpsv2.1", "hpsv2.1-official")
    ]
    assert "hpsv2" in signals["source"].iloc[0]


@pytest.mark.slow  # a real harness run
def test_a_recipe_that_starts_from_another_method_trains_it_first_without_evaluating_it(tmp_path):
    """SmPO's SD1.5 recipe starts from an SFT UNet: asked for smpo alone, the run trains sft first on the
    same data (it is no row of the leaderboard) and starts smpo's policy and reference from it."""
    out = tmp_path / "out"
    rows = run(
        RunOptions(
            methods=["smpo"],
            out=out,
            preset="tiny",
            overrides={"smpo": {"init_method": "sft"}},
            max_prompts=1,
            images_per_prompt=1,
            jobs=1,
        )
    )
    state = json.loads((out / "models" / "smpo" / "final" / "trainer_state.json").read_text())
    assert state["config"]["init_unet"]["path"] == str((out / "models" / "sft" / "final" / "unet").resolve())
    assert {row["method"] for row in rows} == {"base", "smpo"}
    with Store(out, readonly=True) as store:
        runs = store.runs_frame().set_index("method")
    assert runs.loc["sft", "status"] == "done" and runs.loc["smpo", "status"] == "done"
