"""The dashboard on a results directory that a real `harness run` is writing: every page renders at
every moment, and the run, never locked out by the reader, ends with the uninterrupted run's results.

(tests/test_dashboard.py reads beside a synthetic writer that commits a batch every 50 ms; here the
writer is the run itself: its worker processes, the score cache, image files appearing.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.views import PAGES
from faults.kills import Env, Started, kill_group, leaderboard_json, run_args

pytestmark = [pytest.mark.faults, pytest.mark.slow]

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def render_every_page(at: AppTest) -> str:
    """Render each page in turn; returns the sidebar's "N run(s), M image(s)" line of the last one."""
    for page in PAGES:
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
    return at.sidebar.caption[0].value.splitlines()[-1]


def test_every_page_renders_while_a_run_writes(reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference's cache: the training data is copied from it, so the run is at its evaluations
    # and trainings within seconds and writes for longer than it prepares.
    env = Env(out=tmp_path / "out", cache=reference.env.cache, log=tmp_path / "work.jsonl")
    stderr = tmp_path / "stderr.txt"
    monkeypatch.setenv("HARNESS_OUT", str(env.out))
    run = Started(run_args(env, jobs=2), env.variables(), stderr)
    seen_while_running = []  # what each render saw, when the run was still running after it
    try:
        while run.poll() is None:
            if not (env.out / "results.db").exists():
                time.sleep(0.05)
                continue
            at = AppTest.from_file(str(APP), default_timeout=120).run()
            assert not at.exception, at.exception
            seen = render_every_page(at)
            if run.poll() is None:
                seen_while_running.append(seen)
        run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            kill_group(run)
    assert run.returncode == 0, stderr.read_text()[-3000:]
    finished = render_every_page(AppTest.from_file(str(APP), default_timeout=120).run())
    # Several states of the database were read while the run wrote it (so at least one partial one).
    assert len(set(seen_while_running)) >= 2, (seen_while_running, finished)
    assert leaderboard_json(env.out) == reference.fingerprint["leaderboard"]
