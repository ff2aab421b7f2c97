"""`harness run --backend ray` on a real local Ray cluster: the local run's results, byte for byte, with
workers killed in the middle of their jobs on the way (Ray retries them); a training of two processes (Ray
Train's workers) trains what one process does with twice the accumulation; a results directory, moved,
resumes from a driver in another directory without redoing anything."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import harness_cli
from faults.kills import stamps
from harness.errors import HarnessError
from harness.results.layout import ResultsDir
from support.cli import harness_main

ray = pytest.importorskip("ray", reason="the Ray backend needs Ray: pip install '.[ray]'")
pytestmark = pytest.mark.slow  # a Ray cluster and runs on it

# Three images per prompt: 12 a suite, batches of 8 and 4 (the tiny preset's batch is 8), so an evaluation
# splits into two shards when both CPUs of the cluster are free, and each shard must keep the one-process
# run's batches: the tiny model's numbers depend on the batch size.
IMAGES_PER_PROMPT = 3
# The preset's two scorers and a lower-is-better one (its direction must reach the store from the actors too);
# --eval-every 1: dpo's UNets of steps 1 and 2 evaluated too, as runs dpo@1 and dpo@2 (harness.evaluation.curves).
SCORERS = ("toy-fidelity", "toy-quality", "toy-error")
LOWER_IS_BETTER = Path(__file__).parent / "plugins" / "toy_error.py"
RUN = (
    "--plugin",
    str(LOWER_IS_BETTER),
    "run",
    "--preset",
    "tiny",
    "--methods",
    "dpo",
    "--images-per-prompt",
    str(IMAGES_PER_PROMPT),
    "--scorers",
    ",".join(SCORERS),
    "--eval-every",
    "1",
)
PLUGIN = Path(__file__).with_name("ray_kill_plugin.py")
# A small run (the tiny preset's 2 DPO steps of batch 2, one image per prompt), its training as two processes
# on Ray: 2 processes x accumulation 1, the optimizer steps of 1 process x accumulation 2.
SMALL_RUN = ("run", "--preset", "tiny", "--methods", "dpo", "--set", "max_steps=2", "--images-per-prompt", "1")
UNET = Path("models/dpo/final/unet/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, harness_cache: Path) -> Path:
    """The reference: the same run on the local backend (the default), in this process."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = harness_main(*RUN, "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, harness_cache: Path):
    """A local Ray cluster of two CPUs on 127.0.0.1, this process connected, shut down after the module.

    Its workers get this process's environment (HARNESS_CACHE, PYTHONPATH), and the kill plugin's marker
    folder.  Yields (address, marker folder)."""
    markers = tmp_path_factory.mktemp("kills")
    previous = os.environ.get("RAY_KILL_MARKERS")
    os.environ["RAY_KILL_MARKERS"] = str(markers)
    # A driver that shows its workers' progress bars replaces the builtin print for good (ray.experimental.tqdm_ray):
    # put back for the tests that run in this process after the module.
    builtin_print = builtins.print
    context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield context.address_info["gcs_address"], markers
    ray.shutdown()
    builtins.print = builtin_print
    if previous is None:
        del os.environ["RAY_KILL_MARKERS"]
    else:
        os.environ["RAY_KILL_MARKERS"] = previous


@pytest.fixture(scope="module")
def ray_run(cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The same run on the cluster (``--address``), where two workers SIGKILL themselves mid-job
    (tests/ray_kill_plugin.py): a training task and a scorer actor."""
    out = tmp_path_factory.mktemp("ray") / "out"
    result = harness_cli(*ray_command(cluster, str(out)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="module")
def small_ray_run(cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """SMALL_RUN on the cluster with ``--train-processes 2``, made from the folder ``first`` into ``first/runs``
    (a relative ``--out``)."""
    address, _ = cluster
    first = tmp_path_factory.mktemp("small") / "first"
    first.mkdir()
    command = (*SMALL_RUN, "--train-processes", "2", "--backend", "ray", "--address", address, "--out", "runs")
    made = harness_cli(*command, cwd=first)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return first / "runs", made


def ray_command(cluster, out: str) -> tuple[str, ...]:
    """The arguments of `harness run` on the cluster, into ``out``."""
    address, _ = cluster
    return "--plugin", str(PLUGIN), *RUN, "--backend", "ray", "--address", address, "--out", out


def scorer_actors() -> int:
    """How many scorer actors the cluster has started, ended ones included (Ray's actor table: its state API
    needs the dashboard, which the cluster runs without)."""
    from ray._private import state

    return sum(actor["ActorClassName"] == "_Scorers" for actor in state.actors().values())


def leaderboard_json(out: Path) -> str:
    """What `harness leaderboard --out OUT --format json` prints."""
    from harness.run import leaderboard

    return json.dumps(leaderboard(out), indent=2)


def results(out: Path) -> dict[str, object]:
    """What a finished run recorded, keyed so that a row written twice would show."""
    db = sqlite3.connect(out / "results.db")
    images = db.execute(
        "SELECT r.method, i.suite, i.prompt_id, i.image_index, i.seed, i.path, i.sha256 "
        "FROM images i JOIN runs r USING (run_id) ORDER BY 1, 2, 3, 4"
    ).fetchall()
    scores = db.execute(
        "SELECT r.method, i.suite, i.prompt_id, i.image_index, s.scorer, s.version, s.scale, "
        "s.higher_is_better, s.value "
        "FROM scores s JOIN images i USING (image_id) JOIN runs r USING (run_id) "
        "ORDER BY 1, 2, 3, 4, 5"
    ).fetchall()
    training = db.execute(
        "SELECT r.method, t.step, t.term, t.value FROM training_log t JOIN runs r USING (run_id) ORDER BY 1, 2, 3"
    ).fetchall()
    statuses = db.execute("SELECT method, status FROM runs ORDER BY 1").fetchall()
    db.close()
    manifests = {
        str(path.relative_to(out)): path.read_bytes() for path in sorted(out.glob("images/*/*/manifest.jsonl"))
    }
    return {
        "images": images,
        "scores": scores,
        "training": training,
        "statuses": statuses,
        "manifests": manifests,
        "files": sorted(str(path.relative_to(out)) for path in out.glob("images/**/*") if path.is_file()),
    }


def test_a_jobs_error_comes_back_as_it_was_raised_and_a_stopping_run_stops_waiting(cluster):
    """Every job's outcome reaches the run through ``RayBackend._result``: a HarnessError raised on a worker
    is the same one-line error in the driver (not Ray's wrapper with its traceback), and once another job
    failed (``stopping``) no thread keeps waiting for its job, and the job is cancelled: its CPU is free."""
    from harness.backends.ray import RayBackend

    def fail() -> None:
        raise HarnessError("--data './nope' does not exist")

    def wait() -> None:
        time.sleep(60)

    backend = RayBackend(None)  # this process is connected already: the backend uses that cluster
    assert not backend.started_here and backend.description == "on Ray (2 CPUs, 0 GPUs)"
    with pytest.raises(HarnessError) as raised:
        backend._result(ray.remote(fail).remote(), "a job")
    assert str(raised.value) == "--data './nope' does not exist"
    sleeping = ray.remote(wait).remote()
    backend.stopping.set()
    started = time.perf_counter()
    with pytest.raises(HarnessError, match="stopped: another job of the run failed"):
        backend._result(sleeping, "a job")
    assert time.perf_counter() - started < 10
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.perf_counter() - started < 30, "the stopped job still holds its CPU"
        time.sleep(0.1)
    backend.__exit__(None, None, None)
    assert ray.is_initialized()  # a cluster the backend did not start stays up


def test_a_ray_run_gives_the_local_results_byte_for_byte(ray_run, local_run):
    """The leaderboard as `harness leaderboard --format json` prints it, and every image, score, training-log
    row, manifest and run status: the local run's, though two workers died on the way."""
    out, result = ray_run
    assert "on Ray (2 CPUs, 0 GPUs)" in result.stdout
    assert "base: generation in 2 shards" in result.stdout  # the cluster was idle: both CPUs took a shard
    assert leaderboard_json(out) == leaderboard_json(local_run)
    ours, theirs = results(out), results(local_run)
    for what in theirs:
        assert ours[what] == theirs[what], what


def test_killed_workers_were_retried_and_nothing_was_recorded_twice(ray_run, cluster):
    out, result = ray_run
    _, markers = cluster
    assert sorted(path.name for path in markers.iterdir()) == ["scoring", "training"]  # both workers died
    assert result.stdout.count("== dpo: training") == 2  # the killed attempt's stage line, then the retry's
    ours = results(out)
    # Four runs (base, dpo, and with --eval-every 1 dpo@1 and dpo@2), two suites of four prompts, three scorers,
    # each row once (the keys are the tables' own).
    assert len(ours["images"]) == 4 * 2 * 4 * IMAGES_PER_PROMPT and len(ours["scores"]) == 3 * len(ours["images"])
    assert {(score[4], score[7]) for score in ours["scores"]} == {
        ("toy-fidelity", 1),
        ("toy-quality", 1),
        ("toy-error", 0),
    }  # each scorer's direction
    assert ours["statuses"] == [("base", "done"), ("dpo", "done"), ("dpo@1", "done"), ("dpo@2", "done")]
    assert not ResultsDir(out).ray_journals.exists()  # every write the training recorded was made


def test_two_training_processes_on_ray_train_what_one_does_with_twice_the_accumulation(small_ray_run, tmp_path):
    """Ray Train's two workers (gloo, the process group Ray's) against one local process with twice the
    accumulation: the same final UNet, bit for bit, and the same leaderboard; the first worker's training log
    reached the store through the journal, and the run records its two processes."""
    out, made = small_ray_run
    assert "dpo: training as 2 processes" in made.stdout
    one = tmp_path / "one"
    reference = harness_main(*SMALL_RUN, "--set", "dpo.grad_accum=2", "--out", str(one))
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    ours, theirs = load_file(str(out / UNET)), load_file(str(one / UNET))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert leaderboard_json(out) == leaderboard_json(one)
    assert results(out)["training"] == results(one)["training"]
    db = sqlite3.connect(out / "results.db")
    compute = json.loads(db.execute("SELECT compute FROM runs WHERE method = 'dpo'").fetchone()[0])
    db.close()
    assert compute["train_processes"] == 2 and compute["train_cpu_hours"] > 0
    assert not ResultsDir(out).ray_journals.exists()  # the journal made, the exchange folder removed


def test_a_moved_ray_run_resumes_from_a_driver_in_another_directory(small_ray_run, cluster, tmp_path: Path) -> None:
    """The small run, moved, resumed by a relative path from a driver in another working directory, and on one
    process (the count is where a training runs, not one of its settings): nothing rewritten, the same
    leaderboard, and no training task started (nor scorer actor: every score is in the cache).  A path recorded absolute would miss the move; one recorded relative to the working directory,
    the driver.  (Not ``ray_run``: resuming its larger run took longer than making and resuming this one.)"""
    address, _ = cluster
    made, _ = small_ray_run
    elsewhere, moved = tmp_path / "elsewhere", tmp_path / "archive" / "runs-moved"
    for folder in (elsewhere, moved.parent):
        folder.mkdir()
    board = leaderboard_json(made)
    shutil.move(made, moved)
    before, actors = stamps(moved), scorer_actors()
    assert actors > 0  # the run's first evaluations had their scorers on actors
    resumed = harness_cli(
        *SMALL_RUN, "--backend", "ray", "--address", address, "--out", "../archive/runs-moved", cwd=elsewhere
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The training ended already: the driver records it without a task (whose lines Ray prefixes with its name).
    assert "== dpo: training" in resumed.stdout and "dpo training pid=" not in resumed.stdout
    assert scorer_actors() == actors  # every score was in the cache: no scorer was loaded anywhere
    assert stamps(moved) == before, "the resumed run rewrote files of the results directory"
    assert leaderboard_json(moved) == board
