"""The results store: contract, idempotent upserts, transactions, read-only access, export."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.results.run_details import run_details, shown_run_details
from harness.results.store import DIVERSITY_COLUMNS, Store, export
from support.results_fixture import (
    METHODS,
    SCORERS,
    TRAINING_SIGNALS,
    as_schema,
    build_results_dir,
    manifest_rows,
    n_images,
    score_rows,
)

# The contract with harness.results.stats and the lead's orchestrator, spelled out independently of store.py.
SCORES_COLUMNS = [
    "run_id",
    "method",
    "suite",
    "split",
    "metric",
    "metric_version",
    "scale",
    "higher_is_better",
    "prompt_id",
    "category",
    "image_index",
    "seed",
    "path",
    "value",
]


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_results_dir(tmp_path_factory.mktemp("results"))


def new_run(store: Store, method: str = "dpo") -> int:
    return store.get_or_create_run(method, method=method, preset="test", base_model="tiny", config={"beta": 1})


def test_scores_frame_holds_every_score_with_the_contract_columns(results_dir: Path) -> None:
    with Store(results_dir, readonly=True) as store:
        scores = store.scores_frame()
    assert list(scores.columns) == SCORES_COLUMNS
    assert len(scores) == len(METHODS) * n_images() * len(SCORERS)
    assert set(scores["method"]) == set(METHODS)
    assert set(scores.loc[scores["suite"] == "toy-unseen", "split"]) == {"unseen"}
    # Values come back exactly as written, attached to the right image.
    expected = {(r["prompt_id"], r["image_index"], r["scorer"]): r["value"] for r in score_rows("dro", "toy-seen")}
    dro = scores[(scores["method"] == "dro") & (scores["suite"] == "toy-seen")]
    got = {(r.prompt_id, r.image_index, r.metric): r.value for r in dro.itertuples()}
    assert got == expected
    assert (results_dir / dro["path"].iloc[0]).is_file()


def test_runs_record_provenance_and_compute(results_dir: Path) -> None:
    with Store(results_dir, readonly=True) as store:
        runs = store.runs_frame().set_index("method")
    dpo = runs.loc["dpo"]
    assert dpo["status"] == "done" and dpo["ended_at"] >= dpo["started_at"]
    assert dpo["wall_s"] == 12.5 and dpo["unet_evals_per_sample"] == 4.0
    assert json.loads(dpo["config"]) == {"method": "dpo", "beta": 5000}
    versions = json.loads(dpo["versions"])
    assert versions["torch"] and versions["diffusers"] and versions["harness"]
    # The test checkout is a git repository, so the commit is known.
    assert len(dpo["git_commit"]) == 40


def test_get_or_create_run_resumes_and_refuses_a_different_config(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run_id = new_run(store)
        assert new_run(store) == run_id
        assert new_run(store, "dro") != run_id
        with pytest.raises(HarnessError, match=r"run .dpo. in .* was made with other inputs: beta: recorded 1, now 2;"):
            store.get_or_create_run("dpo", method="dpo", preset="test", base_model="tiny", config={"beta": 2})


def test_set_run_status_merges_compute_and_rejects_unknown_status(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run_id = new_run(store)
        calls = {"reward_calls_per_sample": {"pickscore": 24.0}}
        store.set_run_status(run_id, "running", compute={"unet_evals_per_sample": 2.0, **calls})
        store.set_run_status(run_id, "done", compute={"wall_s": 3.0, "gpu_hours": 0.5})
        run = store.runs_frame().iloc[0]
        assert json.loads(run["compute"]) == {"unet_evals_per_sample": 2.0, **calls, "wall_s": 3.0, "gpu_hours": 0.5}
        assert (run["wall_s"], run["gpu_hours"], run["unet_evals_per_sample"]) == (3.0, 0.5, 2.0)
        assert json.loads(run["reward_calls_per_sample"]) == {"pickscore": 24.0}
        assert shown_run_details(run_details(store.runs_frame()))["reward calls / sample"].tolist() == ["pickscore 24"]
        assert run["ended_at"] is not None
        with pytest.raises(HarnessError, match="unknown run status"):
            store.set_run_status(run_id, "finished")
        with pytest.raises(HarnessError, match="no run with id"):
            store.set_run_status(run_id + 99, "done")


def test_a_runs_start_is_its_first_jobs_and_its_peak_memory_the_largest_jobs(tmp_path: Path) -> None:
    def set_started(when: str) -> None:  # as if the run had been created (or started) then
        store._conn.execute("UPDATE runs SET started_at = ? WHERE run_id = ?", (when, run_id))

    with Store(tmp_path) as store:
        run_id = new_run(store)
        set_started("2000-01-01T00:00:00+00:00")
        store.set_run_status(run_id, "running")  # its first job starts: the run starts now, not at its creation
        started = store.runs_frame().iloc[0]["started_at"]
        assert "2000-01-01T00:00:00+00:00" < started <= datetime.now(UTC).isoformat()
        set_started("2001-01-01T00:00:00+00:00")
        store.set_run_status(run_id, "failed")
        store.set_run_status(run_id, "running")  # resumed: still the first job's start
        store.add_compute(
            run_id, {"wall_s": 2.0, "train_wall_s": 2.0, "peak_memory_mb": 900.0, "train_peak_memory_mb": 900.0}
        )
        store.add_compute(
            run_id, {"wall_s": 1.5, "eval_wall_s": 1.5, "peak_memory_mb": 300.0, "eval_peak_memory_mb": 300.0}
        )
        run = store.runs_frame().iloc[0]
    assert run["started_at"] == "2001-01-01T00:00:00+00:00" and pd.isna(run["ended_at"])
    assert (run["wall_s"], run["peak_memory_mb"]) == (3.5, 900.0)
    assert json.loads(run["compute"]) == {
        "wall_s": 3.5,
        "train_wall_s": 2.0,
        "eval_wall_s": 1.5,
        "peak_memory_mb": 900.0,
        "train_peak_memory_mb": 900.0,
        "eval_peak_memory_mb": 300.0,
    }


def test_add_compute_sums_each_jobs_hours(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        gpu, cpu = new_run(store, "dpo"), new_run(store, "dro")
        store.add_compute(gpu, {"gpu_hours": 0.25, "train_gpu_hours": 0.25})
        store.add_compute(gpu, {"gpu_hours": 0.5, "eval_gpu_hours": 0.5})
        store.add_compute(cpu, {"cpu_hours": 0.125, "eval_cpu_hours": 0.125})
        store.set_run_status(gpu, "done", compute={"wall_s": 3.0})  # keeps the sums
        runs = store.runs_frame().set_index("method")
        assert json.loads(runs.loc["dpo", "compute"]) == {
            "gpu_hours": 0.75,
            "train_gpu_hours": 0.25,
            "eval_gpu_hours": 0.5,
            "wall_s": 3.0,
        }
        assert runs.loc["dpo", "gpu_hours"] == 0.75 and pd.isna(runs.loc["dpo", "cpu_hours"])
        assert runs.loc["dro", "cpu_hours"] == 0.125 and pd.isna(runs.loc["dro", "gpu_hours"])
        with pytest.raises(HarnessError, match="no run with id"):
            store.add_compute(cpu + 99, {"cpu_hours": 1.0})


def test_add_images_is_idempotent_and_a_changed_image_loses_its_scores(tmp_path: Path) -> None:
    rows = manifest_rows(tmp_path, "dpo", "toy-seen")
    with Store(tmp_path) as store:
        run_id = new_run(store)
        for _ in range(2):
            store.add_images(run_id, suite="toy-seen", suite_version="v", split="seen", rows=rows)
            store.add_scores(run_id, suite="toy-seen", rows=score_rows("dpo", "toy-seen"))
        assert len(store.images_frame()) == len(rows)
        assert len(store.scores_frame()) == len(rows) * len(SCORERS)

        # Same sha256 again: scores stay.  A new sha256 for one image: only its scores go.
        store.add_images(run_id, suite="toy-seen", suite_version="v", split="seen", rows=rows)
        changed = dict(rows[0], sha256="0" * 64)
        store.add_images(run_id, suite="toy-seen", suite_version="v", split="seen", rows=[changed])
        scores = store.scores_frame()
        assert len(scores) == (len(rows) - 1) * len(SCORERS)
        assert not ((scores["prompt_id"] == changed["prompt_id"]) & (scores["image_index"] == 0)).any()
        images = store.images_frame()
        assert len(images) == len(rows)
        assert images.loc[images["sha256"] == "0" * 64, "prompt_id"].tolist() == [changed["prompt_id"]]


def test_a_failing_write_leaves_no_partial_rows(tmp_path: Path) -> None:
    rows = manifest_rows(tmp_path, "dpo", "toy-seen")
    with Store(tmp_path) as store:
        run_id = new_run(store)
        store.add_images(run_id, suite="toy-seen", suite_version="v", split="seen", rows=rows)
        good = score_rows("dpo", "toy-seen")
        orphan = dict(good[0], prompt_id="not-generated")
        with pytest.raises(HarnessError, match="not stored"):
            store.add_scores(run_id, suite="toy-seen", rows=good + [orphan])
        assert store.scores_frame().empty
        with pytest.raises(HarnessError, match="missing sha256"):
            store.add_images(
                run_id,
                suite="other",
                suite_version="v",
                split="seen",
                rows=[{k: v for k, v in r.items() if k != "sha256"} for r in rows],
            )
        with pytest.raises(HarnessError, match="split must be"):
            store.add_images(run_id, suite="other", suite_version="v", split="train", rows=rows)
        assert set(store.images_frame()["suite"]) == {"toy-seen"}


def test_training_log_is_long_format_and_relogging_a_step_overwrites(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run_id = new_run(store)
        store.log_training(run_id, [(1, {"loss": 0.7, "lr": 1e-5}), (2, {"loss": 0.6, "lr": 1e-5})])
        store.log_training(run_id, [(2, {"loss": 0.5, "lr": 2e-5})])
        store.add_checkpoint(run_id, 2, "models/dpo/checkpoint-2")
        store.add_checkpoint(run_id, 2, "models/dpo/checkpoint-2b")
        training = store.training_frame()
        assert list(training.columns) == ["run_id", "method", "step", "term", "value"]
        loss = training[training["term"] == "loss"].set_index("step")["value"]
        assert loss.to_dict() == {1: 0.7, 2: 0.5}
        assert store.checkpoints_frame()["path"].tolist() == ["models/dpo/checkpoint-2b"]


def test_overlaps_report_the_suite_split(results_dir: Path) -> None:
    with Store(results_dir, readonly=True) as store:
        overlaps = store.overlaps_frame()
    dro = overlaps[overlaps["method"] == "dro"].iloc[0]
    assert (dro["suite"], dro["split"], dro["n_overlap"]) == ("toy-unseen", "unseen", 1)


def test_readonly_store_cannot_write_and_needs_an_existing_database(results_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no results database"):
        Store(tmp_path, readonly=True)
    assert not (tmp_path / "results.db").exists()
    with Store(results_dir, readonly=True) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.set_overlap(1, suite="toy-seen", n_overlap=3)


def test_foreign_or_newer_databases_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(HarnessError, match="not a harness results database"):
        Store(tmp_path / "junk", readonly=True)
    with Store(tmp_path / "new"):
        pass
    with sqlite3.connect(tmp_path / "new" / "results.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(HarnessError, match="schema 99"):
        Store(tmp_path / "new")


def test_opening_a_newer_database_for_writing_leaves_it_untouched(tmp_path: Path) -> None:
    # A future schema that has only a meta table: none of ours may be added to it.
    with closing(sqlite3.connect(tmp_path / "results.db")) as conn, conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    with pytest.raises(HarnessError, match="schema 99"):
        Store(tmp_path)
    with closing(sqlite3.connect(tmp_path / "results.db")) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("meta",)]


def test_training_signals_are_recorded_per_run_and_a_rerun_replaces_them(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        dro, smpo = new_run(store, "dro"), new_run(store, "smpo")
        store.set_training_signals(dro, ["hpsv2.1", "hpsv2", "hpsv2"], "experts ranked by hpsv2 (top 500)")
        store.set_training_signals(smpo, ["pickscore-cosine", "pickscore"], "pair scores by pickscore-cosine")
        frame = store.training_signals_frame()
        assert list(frame.columns) == ["run_id", "method", "metric", "source"]
        assert list(frame.itertuples(index=False, name=None)) == [
            (dro, "dro", "hpsv2", "experts ranked by hpsv2 (top 500)"),
            (dro, "dro", "hpsv2.1", "experts ranked by hpsv2 (top 500)"),
            (smpo, "smpo", "pickscore", "pair scores by pickscore-cosine"),
            (smpo, "smpo", "pickscore-cosine", "pair scores by pickscore-cosine"),
        ]
        # A rerun replaces the run's whole set, and touches no other run.
        store.set_training_signals(dro, ["toy-quality"], "experts ranked by toy-quality")
        store.set_training_signals(smpo, [], "human preference labels")
        expected = [(dro, "dro", "toy-quality", "experts ranked by toy-quality")]
        assert list(store.training_signals_frame().itertuples(index=False, name=None)) == expected

        with pytest.raises(HarnessError, match="no run with id 999"):
            store.set_training_signals(999, ["hpsv2"], "experts")
        with pytest.raises(HarnessError, match="must be a list of metric names"):
            store.set_training_signals(dro, "hpsv2", "experts")  # type: ignore[arg-type]
        with pytest.raises(HarnessError, match="need a source"):
            store.set_training_signals(dro, ["hpsv2"], " ")
        assert list(store.training_signals_frame().itertuples(index=False, name=None)) == expected


def test_a_schema_1_database_is_read_as_is_and_upgraded_when_opened_for_writing(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run_id = new_run(store, "dro")
    as_schema(tmp_path, "1")
    db = tmp_path / "results.db"
    before = db.read_bytes()
    with Store(tmp_path, readonly=True) as store:
        assert store.schema_version == "1"
        assert store.runs_frame()["method"].tolist() == ["dro"]
        signals = store.training_signals_frame()
        assert signals.empty and list(signals.columns) == ["run_id", "method", "metric", "source"]
    assert db.read_bytes() == before, "a read-only open changed the database"

    with Store(tmp_path) as store:
        assert store.schema_version == "3"
        store.set_training_signals(run_id, ["hpsv2"], "experts ranked by hpsv2")
    with Store(tmp_path, readonly=True) as store:
        assert store.schema_version == "3"
        assert store.training_signals_frame()["metric"].tolist() == ["hpsv2"]


def test_a_schema_2_database_reads_without_diversity_and_gains_it_when_opened_for_writing(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run_id = new_run(store, "dro")
        store.set_training_signals(run_id, ["hpsv2"], "experts ranked by hpsv2")
    as_schema(tmp_path, "2")
    before = (tmp_path / "results.db").read_bytes()
    with Store(tmp_path, readonly=True) as store:
        assert store.schema_version == "2"
        assert store.training_signals_frame()["metric"].tolist() == ["hpsv2"]  # schema 2 has them
        diversity = store.diversity_frame()
        assert diversity.empty and list(diversity.columns) == DIVERSITY_COLUMNS
    assert (tmp_path / "results.db").read_bytes() == before, "a read-only open changed the database"
    with Store(tmp_path) as store:
        assert store.schema_version == "3"
        store.add_diversity(
            run_id, suite="s", embedder="clip", version="v1", rows=[{"prompt_id": 7, "n_images": 3, "value": 0.25}]
        )
        store.add_diversity(
            run_id, suite="s", embedder="clip", version="v1", rows=[{"prompt_id": 7, "n_images": 3, "value": 0.5}]
        )
        assert store.diversity_frame().to_dict("records") == [
            {
                "run_id": run_id,
                "method": "dro",
                "suite": "s",
                "prompt_id": "7",
                "embedder": "clip",
                "version": "v1",
                "n_images": 3,
                "value": 0.5,
            }
        ]
        with pytest.raises(HarnessError, match="missing n_images, value"):
            store.add_diversity(run_id, suite="s", embedder="clip", version="v1", rows=[{"prompt_id": 7}])


# A writer that adds one suite's images and scores per transaction, BATCH rows each, and can be
# killed at any moment.  Rerunning it must fill in exactly what is missing.
WRITER = textwrap.dedent("""
    import sys
    from harness.results.store import Store
    out, batches, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Store(out) as store:
        run_id = store.get_or_create_run("dpo", method="dpo", preset=None, base_model="tiny", config={})
        for b in range(batches):
            rows = [dict(prompt_id=f"p{b}-{i}", prompt="p", category="c", image_index=0, seed=i,
                         path=f"images/{b}/{i}.png", sha256=f"{b}-{i}") for i in range(batch)]
            store.add_images(run_id, suite=f"s{b}", suite_version="v", split="seen", rows=rows)
            store.add_scores(run_id, suite=f"s{b}", rows=[
                dict(prompt_id=r["prompt_id"], image_index=0, scorer=m, version="1", scale="x", value=1.0)
                for r in rows for m in ("a", "b")])
""")


@pytest.mark.slow  # a writer process SIGKILLed mid-run
def test_a_killed_writer_leaves_whole_transactions_and_a_rerun_completes(tmp_path: Path) -> None:
    batches, batch = 40, 500
    cmd = [sys.executable, "-c", WRITER, str(tmp_path), str(batches), str(batch)]
    writer = subprocess.Popen(cmd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (tmp_path / "results.db").exists():
            with Store(tmp_path, readonly=True) as store:
                if len(store.images_frame()) >= 3 * batch:
                    break
    writer.send_signal(signal.SIGKILL)
    writer.wait()

    with Store(tmp_path, readonly=True) as store:
        images, scores = store.images_frame(), store.scores_frame()
    assert 3 * batch <= len(images) < batches * batch, "the writer was not killed mid-run"
    # Whole batches only: every stored suite has all its images, and scores come in whole batches.
    assert (images.groupby("suite").size() == batch).all()
    assert (scores.groupby("suite").size() == 2 * batch).all()

    subprocess.run(cmd, check=True)
    with Store(tmp_path, readonly=True) as store:
        assert len(store.images_frame()) == batches * batch
        assert len(store.scores_frame()) == 2 * batches * batch
        assert len(store.runs_frame()) == 1


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_export_writes_every_table_readable_by_pandas(results_dir: Path, tmp_path: Path, fmt: str) -> None:
    files = export(results_dir, tmp_path / "export", fmt)
    assert sorted(f.name for f in files) == sorted(
        f"{t}.{fmt}"
        for t in ("runs", "checkpoints", "training", "images", "scores", "overlaps", "training_signals", "diversity")
    )
    read = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}[fmt]
    signals = read(tmp_path / "export" / f"training_signals.{fmt}")
    assert [(r.method, r.metric, r.source) for r in signals.itertuples()] == [
        (method, metric, source) for method, (metrics, source) in TRAINING_SIGNALS.items() for metric in metrics
    ]
    scores = read(tmp_path / "export" / f"scores.{fmt}")
    with Store(results_dir, readonly=True) as store:
        expected = store.scores_frame()
    assert list(scores.columns) == SCORES_COLUMNS
    assert len(scores) == len(expected)
    assert scores["value"].sum() == pytest.approx(expected["value"].sum())
    runs = read(tmp_path / "export" / f"runs.{fmt}")  # the compute beside each run: no reward calls offline
    assert runs["unet_evals_per_sample"].tolist() == [4.0] * len(runs)
    assert runs["reward_calls_per_sample"].tolist() == ["{}"] * len(runs)
    assert not list((tmp_path / "export").glob(".*tmp*"))


def test_export_rejects_unknown_format_and_missing_results(results_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="unknown export format 'xlsx'"):
        export(results_dir, tmp_path, "xlsx")  # type: ignore[arg-type]
    with pytest.raises(HarnessError, match="no results database"):
        export(tmp_path / "nothing-here", tmp_path / "out", "csv")


def test_a_journal_records_a_jobs_writes_for_the_owner_of_the_database_to_make(tmp_path: Path) -> None:
    """A job on a Ray worker must not open results.db (another machine: SQLite's locks do not hold):
    its Store records its writes in a journal file, which the driver replays into the database."""
    from harness.results.store import StoreJournal

    db = tmp_path / "out" / "results.db"
    with Store(db) as store:
        run_id = new_run(store, "dpo")
    rows = manifest_rows(tmp_path / "out", "dpo", "toy-seen")
    journal = StoreJournal(tmp_path / "journal.jsonl")

    def job() -> None:  # what harness.run's job functions do, in a worker
        with Store(db) as store:
            store.set_run_status(run_id, "running")
            store.log_training(run_id, [(0, {"loss": 0.5}), (1, {"loss": 0.25})])
            store.add_images(run_id, suite="toy-seen", suite_version="v", split="seen", rows=rows)
            store.add_scores(run_id, suite="toy-seen", rows=score_rows("dpo", "toy-seen"))
            store.add_compute(run_id, {"cpu_hours": 0.5})
            with pytest.raises(HarnessError, match="can only record"):
                store.get_or_create_run("sft", method="sft", preset=None, base_model="m", config={})

    with journal.recording():
        job()
    assert len(journal.entries()) == 5
    with Store(db, readonly=True) as store:
        assert store.images_frame().empty and store.training_frame().empty  # nothing was written yet
    # A worker killed mid-line; its retry appends after the half line.
    with open(journal.path, "a") as f:
        f.write('{"write": "add_compute", "args": [')
    assert len(journal.entries()) == 5
    with journal.recording(), Store(db) as store:
        store.set_run_status(run_id, "trained", {"wall_s": 2.0})

    with Store(db) as store:
        made = journal.replay(store, journal.replay(store, 0) - 1)  # the last write twice: an upsert
        assert made == 6
        assert len(store.images_frame()) == len(rows) and len(store.scores_frame()) == len(rows) * len(SCORERS)
        assert store.training_frame()["value"].tolist() == [0.5, 0.25]
        run = store.runs_frame().set_index("method").loc["dpo"]
        assert run["status"] == "trained" and json.loads(run["compute"]) == {"cpu_hours": 0.5, "wall_s": 2.0}

    in_memory = StoreJournal()
    with in_memory.recording(), Store(db) as store:
        store.add_checkpoint(run_id, 2, "models/dpo/checkpoint-2")
    assert in_memory.entries() == [
        {"write": "add_checkpoint", "args": [run_id, 2, "models/dpo/checkpoint-2"], "kwargs": {}}
    ]
