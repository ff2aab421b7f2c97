"""`harness run --train-processes 2` with one training process SIGKILLed in the middle of an optimizer step: the
run ends soon after in one line (a collective with a dead peer fails at once, not after the process group's
30-minute timeout), and rerunning the same command resumes from the last checkpoint to the leaderboard of an
uninterrupted run.

The kill lands at an exact point, held open by ``work_log_plugin.py``'s gate for rank 1 alone: the start of
optimizer step 3 (0-based), after checkpoint-2, while rank 0 goes into that step and waits for rank 1 in its
gradient all-reduce.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from faults.kills import PLUGIN, Started, WorkLog, kill_group, leaderboard_json, run_here
from support.cli import harness_main

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.distributed]

# The smallest run whose training is killed mid-step after a checkpoint: four optimizer steps, a checkpoint
# every two; an evaluation of two prompts, one image each, one sampler step.
RUN = (
    *("run", "--preset", "tiny", "--methods", "dpo", "--set", "max_steps=4", "--set", "checkpoint_every=2"),
    *("--suites", "toy-seen", "--max-prompts", "2", "--images-per-prompt", "1", "--steps", "1"),
)
KILLED_LINE = (
    "harness: error: dpo: training process 1 of 2 ended with signal SIGKILL; the others were stopped; a rerun "
    "resumes from the last checkpoint"
)


def steps(events: list[dict], phase: str) -> list[int]:
    return sorted({e["step"] for e in events if e["event"] == "step" and e["phase"] == phase})


def in_step_3(events: list[dict]) -> dict | None:
    """Rank 1's gate event, once rank 0 (the other pid) has begun step 3 too; else None."""
    gate = next((e for e in events if e["event"] == "gate"), None)
    if gate and any(e["event"] == "step" and e["step"] == 3 and e["pid"] != gate["pid"] for e in events):
        return gate
    return None


def test_a_training_process_killed_mid_step_ends_the_run_in_one_line_and_a_rerun_resumes(
    harness_cache, tiny_model_dir, tmp_path
):
    # The uninterrupted run, in this process: the same command on one process with twice the accumulation,
    # which trains the 2-process run's weights bit for bit (tests/test_train_distributed.py) without starting
    # any process.
    uninterrupted = harness_main(*RUN, "--set", "dpo.grad_accum=2", "--jobs", "1", "--out", str(tmp_path / "one"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    out, log, stderr = tmp_path / "out", WorkLog(tmp_path / "work.jsonl"), tmp_path / "stderr.txt"
    args = ["--plugin", str(PLUGIN), *RUN, "--train-processes", "2", "--out", str(out)]
    variables = {**os.environ, "FAULTS_WORK_LOG": str(log.path), "OMP_NUM_THREADS": "1"}
    process = Started(args, {**variables, "FAULTS_GATE": "micro:3:0", "FAULTS_GATE_RANK": "1"}, stderr)
    try:
        # Killed once rank 1 waits at its gate and rank 0 has begun step 3 (the other pid: it does not wait).
        deadline = time.monotonic() + 300
        while not (gate := in_step_3(log.since_mark())):
            assert process.poll() is None and time.monotonic() < deadline, stderr.read_text()[-3000:]
            time.sleep(0.02)
        os.kill(gate["pid"], signal.SIGKILL)
        killed = time.monotonic()
        process.communicate(timeout=120)
        ended_after = time.monotonic() - killed
    finally:
        kill_group(process)
    rank_0 = [e for e in log.since_mark() if e["event"] == "step" and e["pid"] != gate["pid"]]
    assert steps(rank_0, "begin") == [0, 1, 2, 3] and steps(rank_0, "end") == [0, 1, 2]  # died in step 3
    assert (process.returncode, stderr.read_text().splitlines()[-1]) == (2, KILLED_LINE)
    assert ended_after < 60, ended_after  # seconds, on a loaded 2-core machine; the timeout is 30 minutes
    models = out / "models" / "dpo"
    assert (models / "checkpoint-2" / "trainer_state.json").exists() and not (models / "final").exists()

    log.mark()
    rerun = run_here(args, variables, stderr)
    assert rerun.returncode == 0, stderr.read_text()[-3000:]
    assert steps(log.since_mark(), "begin") == [2, 3]  # from checkpoint-2, on both processes
    assert leaderboard_json(out) == leaderboard_json(tmp_path / "one")
