"""A finished results directory resumes by any spelling of its path: absolute after being copied, relative from
another working directory after being moved, with its inputs' identity recorded by content
(``harness.results.identity``).  Each rerun trains nothing, generates and scores nothing, rewrites no file of the
directory's models and images, and prints the leaderboard byte for byte.  The same on a local Ray cluster:
tests/test_ray_backend.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from faults.kills import Env, WorkLog, count, leaderboard_json, run_args, run_here, stamps

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _args_with_out(env: Env, out: str) -> list[str]:
    args = run_args(env, jobs=2)
    args[args.index("--out") + 1] = out
    return args


def test_a_copied_and_moved_results_directory_resumes_by_any_path(reference, tmp_path: Path) -> None:
    root = tmp_path / "project"
    copy = root / "runs"
    shutil.copytree(reference.env.out, copy)  # a copy: other inodes, other times, another disk's path
    env = Env(out=copy, cache=reference.env.cache, log=tmp_path / "work.jsonl")
    log = WorkLog(env.log)
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "archive" / "runs-moved"

    def resume(cwd: Path, out: str, where: Path) -> None:
        before = stamps(where)
        log.mark()
        stderr = tmp_path / "stderr.txt"
        outcome = run_here(_args_with_out(env, out), env.variables(), stderr, cwd=cwd)
        assert outcome.returncode == 0, f"--out {out} from {cwd}: " + stderr.read_text()[-3000:]
        events = log.since_mark()
        assert count(events, "step") == 0 and count(events, "unet") == 0 and count(events, "cached") == 0, (
            f"--out {out} from {cwd} redid work: {[e for e in events if e['event'] != 'gate'][:5]}"
        )
        assert stamps(where) == before, f"--out {out} from {cwd} rewrote files of the results directory"
        assert leaderboard_json(where) == reference.fingerprint["leaderboard"]

    resume(root, str(copy.resolve()), copy)  # by its absolute path
    moved.parent.mkdir()
    os.rename(copy, moved)
    # After `mv`, relative from another working directory: a path recorded absolute would miss the move, one
    # recorded relative to the working directory would miss this directory.
    resume(tmp_path / "elsewhere", "../archive/runs-moved", moved)
