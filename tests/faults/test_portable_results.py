"""A finished results directory resumes by any spelling of its path: absolute, relative from another working
directory, after being copied and after being moved, with its inputs' identity recorded by content
(``harness.identity``).  Each rerun trains nothing, generates and scores nothing, rewrites no file of the
directory's models and images, and prints the leaderboard byte for byte; the same on a local Ray cluster from a
driver in another directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from faults.kills import Env, WorkLog, count, image_files, leaderboard_json, run_args, run_to_end

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Every file of the trained models and images (relative to ``out``) -> (inode, mtime_ns)."""
    files = [path for path in out.glob("models/**/*") if path.is_file()]
    stamps = {str(path.relative_to(out)): (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}
    return {**stamps, **{str(Path(path).relative_to(out)): stamp for path, stamp in image_files(out).items()}}


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
        before = _stamps(where)
        log.mark()
        stderr = tmp_path / "stderr.txt"
        outcome = run_to_end(_args_with_out(env, out), env.variables(), stderr, cwd=cwd)
        assert outcome.returncode == 0, f"--out {out} from {cwd}: " + stderr.read_text()[-3000:]
        events = log.since_mark()
        assert count(events, "step") == 0 and count(events, "unet") == 0 and count(events, "cached") == 0, \
            f"--out {out} from {cwd} redid work: {[e for e in events if e['event'] != 'gate'][:5]}"
        assert _stamps(where) == before, f"--out {out} from {cwd} rewrote files of the results directory"
        assert leaderboard_json(where) == reference.fingerprint["leaderboard"]

    resume(root, str(copy.resolve()), copy)  # by its absolute path
    resume(root, "runs", copy)  # relative, from the directory above it
    resume(tmp_path / "elsewhere", "../project/runs", copy)  # from another working directory
    moved.parent.mkdir()
    os.rename(copy, moved)
    resume(tmp_path / "elsewhere", "../archive/runs-moved", moved)  # after `mv`


def test_a_ray_run_resumes_from_a_driver_in_another_directory(tmp_path: Path, harness_cache: Path) -> None:
    """On a local Ray cluster (started as tests/test_ray_backend.py starts one): made from one directory,
    resumed from another by a relative path, then moved and resumed again; nothing rewritten, the same
    leaderboard."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs Ray: pip install '.[ray]'")
    from conftest import harness_cli

    context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        run = ("run", "--preset", "tiny", "--methods", "dpo", "--set", "max_steps=2", "--images-per-prompt", "1",
               "--backend", "ray", "--address", context.address_info["gcs_address"])
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        made = harness_cli(*run, "--out", "runs", cwd=first)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        board, out = leaderboard_json(first / "runs"), first / "runs"
        for cwd, spelled, where in [(second, "../first/runs", out), (first, "../moved", tmp_path / "moved")]:
            if where != out:
                os.rename(out, where)
            before = _stamps(where)
            resumed = harness_cli(*run, "--out", spelled, cwd=cwd)
            assert resumed.returncode == 0, f"--out {spelled} from {cwd}: " + resumed.stderr[-3000:]
            assert _stamps(where) == before, f"--out {spelled} from {cwd} rewrote files of the results directory"
            assert leaderboard_json(where) == board
    finally:
        ray.shutdown()
