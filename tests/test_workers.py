"""`harness run` trains, samples and scores the models in worker processes: the results must not
depend on how many, a failing job must stop the others, and user plugins must reach the workers."""

from __future__ import annotations

import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

from harness import workers
from harness.api import registry
from harness.errors import HarnessError
from harness.workers import run_jobs
from support.cli import harness_main


def _square_or_fail(job: tuple[str, float]) -> float:
    kind, value = job
    if kind == "fail":
        raise HarnessError(f"job {value} failed")
    if kind == "sleep":
        time.sleep(value)
    return value * value


def test_results_come_back_in_job_order():
    assert run_jobs(_square_or_fail, [("sleep", 1.5), ("ok", 2.0), ("ok", 3.0)], processes=2) == [2.25, 4.0, 9.0]


def test_a_failing_job_stops_the_others():
    started = time.perf_counter()
    with pytest.raises(HarnessError, match="job 1.0 failed"):
        run_jobs(_square_or_fail, [("sleep", 120.0), ("fail", 1.0)], processes=2)
    assert time.perf_counter() - started < 60  # the sleeping worker was terminated, not waited for


def test_a_cpu_pool_has_one_worker_per_core_at_most():
    import os

    cores = len(os.sched_getaffinity(0))
    assert [workers.default_processes(n) for n in (1, cores, cores + 3)] == [1, cores, cores]


def test_each_worker_gets_gpus_of_its_own_for_a_trainings_processes():
    """Trainings of N processes: worker k sees GPUs kN..kN+N-1 (as CUDA_VISIBLE_DEVICES names them), never one
    another worker sees; one GPU per worker is shared round the GPUs, as before; a CPU has none."""
    assert workers.worker_gpus(["0", "1", "2", "3", "4"], 2, 2) == ["0,1", "2,3"]
    assert workers.worker_gpus(["4", "6", "7", "GPU-a"], 1, 4) == ["4,6,7,GPU-a"]
    assert workers.worker_gpus(["0", "1"], 3, 1) == ["0", "1", "0"]
    assert workers.worker_gpus([], 2, 2) == []
    with pytest.raises(
        HarnessError,
        match=r"^2 jobs at once with trainings of 2 processes need 4 GPUs, 2 each; this "
        r"machine has 3: --jobs 1 fits$",
    ):
        workers.worker_gpus(["0", "1", "2"], 2, 2)
    with pytest.raises(HarnessError, match=r"^a training of 4 processes needs 4 GPUs, one each; this machine has 2$"):
        workers.worker_gpus(["0", "1"], 1, 4)


def test_more_gpus_than_the_jobs_at_once_have_is_refused_before_anything_is_made(monkeypatch, tmp_path, tiny_model_dir):
    """`harness run` on 3 GPUs (their count stood in for: no GPU here) with 2 jobs at once of 2 processes each:
    one line, exit 2, no results directory; --jobs left out, the pool is sized to fit (1 job at a time)."""
    monkeypatch.setattr(workers, "_gpu_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    out = tmp_path / "out"
    result = harness_main(
        "run", "--preset", "tiny", "--methods", "dpo", "--train-processes", "2", "--jobs", "2", "--out", str(out)
    )
    assert (result.returncode, result.stderr) == (
        2,
        "harness: error: 2 jobs at once with trainings of 2 processes need 4 GPUs, 2 each; this machine has 3: "
        "--jobs 1 fits\n",
    )
    assert not out.exists()
    assert workers.default_processes(5, 2) == 1 and workers.default_processes(5, 1) == 3


def _method_description(name: str) -> str:
    return registry.METHODS.get(name).description


@pytest.mark.slow  # spawns new interpreters
def test_spawned_workers_load_the_plugins(monkeypatch, tmp_path):
    """On a GPU machine workers are spawned, not forked (CUDA cannot be forked): they import the
    parent's plugins themselves.  Forked workers (a CPU) inherit them: the next test covers that."""
    registry.METHODS.names()  # built-ins loaded before the entries are copied
    monkeypatch.setattr(registry.METHODS, "_entries", dict(registry.METHODS._entries))  # undone after the test
    monkeypatch.setattr(registry, "_LOADED_PLUGINS", [])
    plugin = tmp_path / "spawned_plugin.py"
    plugin.write_text(
        textwrap.dedent("""
        from harness.api.registry import register_method
        from methods.dpo import DPO

        @register_method("spawned-dpo")
        class SpawnedDPO(DPO):
            description = "registered by a plugin"
    """)
    )
    registry.load_plugin(str(plugin))
    monkeypatch.setattr(workers, "start_method", lambda gpus: "spawn")
    assert run_jobs(_method_description, ["spawned-dpo", "dpo"], processes=2) == [
        "registered by a plugin",
        registry.METHODS.get("dpo").description,
    ]


def _images_and_scores(out: Path, methods: tuple[str, ...]) -> dict:
    """{(method, suite, prompt_id, image_index, scorer, version): (image sha256, score)}, one entry per stored score."""
    db = sqlite3.connect(out / "results.db")
    rows = db.execute(
        "SELECT r.method, i.suite, i.prompt_id, i.image_index, s.scorer, s.version, i.sha256, s.value FROM images i "
        "JOIN runs r USING (run_id) JOIN scores s USING (image_id) "
        f"WHERE r.method IN ({','.join('?' * len(methods))})",
        methods,
    ).fetchall()
    db.close()
    table = {tuple(row[:6]): row[6:] for row in rows}
    assert len(table) == len(rows), "two scores share a key: one of them would never be compared"
    assert {key[4] for key in table} == {"toy-fidelity", "toy-quality"}, "every scorer of the preset is compared"
    return table


def test_results_do_not_depend_on_jobs_and_plugins_reach_the_workers(tiny_run_dir, tmp_path):
    """The session's tiny run used two workers (two models, at least two cores); here every job runs
    in this process, one after the other.  A plugin method (DPO under another name) runs in a (forked)
    worker too."""
    plugin = tmp_path / "renamed_dpo.py"
    plugin.write_text(
        textwrap.dedent("""
        from harness.api.registry import register_method
        from methods.dpo import DPO

        @register_method("renamed-dpo")
        class RenamedDPO(DPO):
            description = "Diffusion-DPO under another name (a plugin)"
    """)
    )
    out = tmp_path / "sequential"
    result = harness_main(
        "--plugin", str(plugin), "run", "--preset", "tiny", "--methods", "dpo", "--jobs", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sequential = _images_and_scores(out, ("base", "dpo"))
    assert sequential and sequential == _images_and_scores(tiny_run_dir, ("base", "dpo"))

    out = tmp_path / "plugin"
    tiny_dpo = ["max_steps=2", "batch_size=2", "lr=1e-3", "scale_lr=False", "warmup_steps=0", "lr_scheduler=constant"]
    result = harness_main(
        "--plugin",
        str(plugin),
        "run",
        "--preset",
        "tiny",
        "--methods",
        "renamed-dpo",
        "--jobs",
        "2",
        *[arg for setting in tiny_dpo for arg in ("--set", setting)],
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    renamed = {("dpo", *key[1:]): value for key, value in _images_and_scores(out, ("renamed-dpo",)).items()}
    assert renamed == {key: value for key, value in sequential.items() if key[0] == "dpo"}
