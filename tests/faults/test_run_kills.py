"""`harness run` SIGKILLed whole (its process group: the CLI and its workers) and rerun: the README's
"rerun the same command to resume" must end with exactly the results of an uninterrupted run, and
a rerun must not redo what was finished.

Each trial starts from an empty results directory and an empty HARNESS_CACHE (a first run: the
tiny base model, the training data and the training features are made by the run that is killed,
and the rerun uses that cache), kills the run at each of its kill points in turn (rerunning the
same command after each), then lets a last rerun finish.  A kill point is a stage line the run
prints (``== dro: training  [4 s]``) plus a delay: 0 kills at the stage boundary, a positive delay
mid-stage.  The delays are drawn from a seeded generator, so a failing trial reruns the same plan
(on a machine of about the same speed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from faults.kills import (
    Env,
    WorkLog,
    count,
    done_at_kill,
    image_files,
    leaderboard_json,
    redone_work,
    results_fingerprint,
    run_and_kill,
    run_args,
    run_here,
    temporaries,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SEED = 16


@dataclass(frozen=True)
class AfterStage:
    """A kill ``delay`` seconds after the run prints ``== <stage>``: at the stage boundary when 0."""

    stage: str
    delay: tuple[float, float]  # drawn uniformly from this range

    def reached(self, stages: list[str], events: list[dict]) -> bool:
        return any(line.startswith(f"== {self.stage}") for line in stages)


@dataclass(frozen=True)
class InStep:
    """A kill ``delay`` seconds into optimizer step ``step`` (0-based) of ``method``'s training, as
    the work log shows it: a point in the middle of a training that machine load does not move."""

    method: str
    step: int
    delay: tuple[float, float]

    def reached(self, stages: list[str], events: list[dict]) -> bool:
        return any(
            e["event"] == "step"
            and e["phase"] == "begin"
            and e["step"] == self.step
            and Path(e["out"]).name == self.method
            for e in events
        )


@dataclass(frozen=True)
class Trial:
    name: str
    jobs: int
    methods: str
    kills: tuple[AfterStage | InStep, ...]

    def delays(self) -> list[float]:
        rng = random.Random(f"{SEED}:{self.name}")
        return [round(rng.uniform(*point.delay), 2) for point in self.kills]


TRIALS = [
    # The fault campaign's case: the first run killed while the training data is made (the base's
    # evaluation runs beside it in a worker; 2-3 s on the 2-core machine); then in DRO's third
    # optimizer step (~0.6 s each), after its checkpoint-2 (replay buffer included) was written,
    # while DPO finishes its training or evaluates beside it.
    Trial(
        "first-run-jobs-2",
        jobs=2,
        methods="dpo,dro",
        kills=(
            AfterStage("training data", (0.2, 1.0)),
            InStep("dro", 2, (0.05, 0.3)),
        ),
    ),
    # One job at a time, in the CLI's process, killed at the boundary between the two trainings:
    # the base's evaluation, the training data and the first training are finished, and the rerun
    # must redo none of them.  The methods are listed the other way round, so DRO trains first and
    # caches the features of its experts before DPO meets those images in its pairs (in the
    # reference, DPO caches them first): what a run finds in the feature cache must not change its
    # numbers (the campaign's bug).
    Trial("first-run-jobs-1", jobs=1, methods="dro,dpo", kills=(AfterStage("dpo: training", (0.0, 0.0)),)),
]


def test_a_rerun_of_a_finished_run_does_no_work(reference) -> None:
    """Nothing trained, generated or scored twice: counted, not inferred from row counts."""
    first = reference.work
    assert count(first, "unet") > 100 and count(first, "score") > 0 and count(first, "cached") > 0
    assert count(first, "step") == 2 * 2 * 4  # begin and end of 4 steps of 2 methods: the counter works
    env = reference.env
    images = image_files(env.out)
    log = WorkLog(env.log)
    log.mark()
    # With one job where the reference had two: the work to skip does not depend on --jobs either.
    outcome = run_here(run_args(env, jobs=1), env.variables(), env.out.parent / "rerun-stderr.txt")
    assert outcome.returncode == 0, (env.out.parent / "rerun-stderr.txt").read_text()[-3000:]
    work = log.since_mark()
    assert {event: count(work, event) for event in ("unet", "score", "cached", "step")} == {
        "unet": 0,
        "score": 0,
        "cached": 0,
        "step": 0,
    }
    assert image_files(env.out) == images  # not one file rewritten (same inode and mtime)
    assert leaderboard_json(env.out) == reference.fingerprint["leaderboard"]


@pytest.mark.parametrize("trial", TRIALS, ids=lambda trial: trial.name)
def test_killed_runs_resume_to_the_uninterrupted_results(trial: Trial, reference, tmp_path: Path) -> None:
    env = Env.fresh(tmp_path)
    stderr = tmp_path / "stderr.txt"
    args = run_args(env, trial.jobs, trial.methods)
    log = WorkLog(env.log)
    history = []  # what each run did, for the failure messages
    done = None  # what the last killed run had finished

    def assert_nothing_redone() -> None:
        if done is not None:
            assert redone_work(done, log.since_mark(), image_files(env.out)) == [], history

    for point, delay in zip(trial.kills, trial.delays()):
        log.mark()
        outcome = run_and_kill(args, env.variables(), stderr, log, point.reached, delay)
        history.append(f"killed {delay} s after {point}: {outcome.stages}")
        assert outcome.killed, f"the run ended without reaching its kill point (rc {outcome.returncode}): {history}"
        assert_nothing_redone()
        done = done_at_kill(env)
        history.append(f"finished when killed: {done}")
    log.mark()
    outcome = run_here(args, env.variables(), stderr)
    history.append(f"final run: {outcome.stages}")
    assert outcome.returncode == 0, f"{history}\n{stderr.read_text()[-3000:]}"
    assert_nothing_redone()
    assert results_fingerprint(env) == reference.fingerprint, history
    # A checkpoint or an exported UNet half written when the run was killed is written again by the
    # rerun under the same temporary name: none may be left.  (A killed process's per-pid
    # temporaries, e.g. ``.00003_01.png.<pid>.tmp``, are never removed: a kill rarely lands in their
    # milliseconds, and only a live writer knows a temporary is its own.)
    assert [path for path in temporaries(env.out) if Path(path).is_dir()] == [], history
