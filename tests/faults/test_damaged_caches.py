"""Caches that heal: a damaged cache entry costs a recomputation and one warning line, never the run.

Each test damages a copy of the finished reference run (its results directory and its HARNESS_CACHE) as
an interrupted copy or a bad disk would, reruns the same command, and expects the uninterrupted run's
leaderboard with exactly one warning line saying what was rebuilt.  Only ``results.db``, the record and
not a cache, stops the run: with one error line.  `harness verify` finds each of these damages, and
`--repair` fixes them.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.kills import Env, harness_here, leaderboard_json, results_fingerprint, run_args
from support.cli import harness_main

pytestmark = [pytest.mark.faults, pytest.mark.slow]

WARNING = re.compile(r"\bwarning: ")


@pytest.fixture
def damaged(reference, tmp_path: Path) -> Iterator[Env]:
    """A copy of the finished reference run to damage, at the reference's own paths (a results directory
    records the paths its run was given); the reference is kept aside meanwhile and put back after."""
    root = reference.env.out.parent
    kept = tmp_path / "reference"
    root.rename(kept)  # a rename: the reference's files keep their inodes and times for the other tests
    shutil.copytree(kept, root, symlinks=True)
    try:
        yield reference.env
    finally:
        shutil.rmtree(root)
        kept.rename(root)


def rerun(env: Env, args: list[str] | None = None) -> subprocess.CompletedProcess:
    """The same command again (in this process: what is checked is what the run decides, not its process)."""
    return harness_here(args or run_args(env, jobs=2), env.variables())


def warnings(result: subprocess.CompletedProcess) -> list[str]:
    return [line.strip() for line in (result.stdout + result.stderr).splitlines() if WARNING.search(line)]


def cut_short(path: Path) -> None:
    """The first half of the file, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def verify(env: Env, *options: str) -> subprocess.CompletedProcess:
    """`harness verify --out OUT OPTIONS` with the run's HARNESS_CACHE (in this process)."""
    return harness_main("verify", "--out", str(env.out), *options, env=env.variables())


def test_truncated_feature_cache_entries_are_rebuilt(damaged: Env, reference) -> None:
    entries = sorted((damaged.cache / "train-features").rglob("*.safetensors"))
    assert len(entries) > 3
    for entry in entries:
        cut_short(entry)
    shutil.rmtree(damaged.out / "models" / "dpo")  # DPO trains again: its training reads the feature cache
    result = rerun(damaged)
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = warnings(result)
    assert re.fullmatch(r"warning: \d+ damaged feature-cache entries were rebuilt", line), line
    after = results_fingerprint(damaged)
    assert after["leaderboard"] == reference.fingerprint["leaderboard"]
    assert after["unets"] == reference.fingerprint["unets"]  # the rebuilt features are the same bits


def test_a_garbage_score_cache_is_moved_aside_and_rebuilt(damaged: Env, reference) -> None:
    cache = damaged.out / "cache" / "scores.sqlite"
    for companion in cache.parent.glob("scores.sqlite-*"):
        companion.unlink()
    cache.write_bytes(b"not a database " * 1000)
    result = rerun(damaged)
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = warnings(result)
    assert f"{cache} was damaged" in line and "only a cache" in line
    [aside] = cache.parent.glob("scores.sqlite.damaged-*Z")
    assert aside.read_bytes() == b"not a database " * 1000
    assert leaderboard_json(damaged.out) == reference.fingerprint["leaderboard"]


def test_a_damaged_built_model_is_built_again(damaged: Env, reference) -> None:
    weights = damaged.cache / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors"
    whole = weights.read_bytes()
    cut_short(weights)
    result = rerun(damaged)
    assert result.returncode == 0, result.stderr[-3000:]
    assert warnings(result) == ["warning: 1 damaged built model was rebuilt"]
    assert weights.read_bytes() == whole  # built again the same
    assert leaderboard_json(damaged.out) == reference.fingerprint["leaderboard"]


@pytest.fixture(scope="module")
def scored_run(reference, tmp_path_factory: pytest.TempPathFactory) -> tuple[Env, list[str], str]:
    """DRO on the reference's training pairs with their scores left out, so `harness run` scores the images
    into a table of $HARNESS_CACHE/data-scores and ranks its experts from it (a copy of the reference's cache:
    the base model is built already); returns the run's place, its arguments and its leaderboard."""
    root = tmp_path_factory.mktemp("data-scores")
    env = Env.fresh(root)
    shutil.copytree(reference.env.cache, env.cache)
    pairs = root / "pairs"
    shutil.copytree(reference.env.out / "data" / "images", pairs / "images")
    rows = [json.loads(line) for line in (reference.env.out / "data" / "pairs.jsonl").read_text().splitlines()]
    (pairs / "pairs.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in row.items() if not k.startswith("score")}) + "\n" for row in rows)
    )
    args = [
        *run_args(env, jobs=2, methods="dro"),
        "--data",
        str(pairs),
        "--set",
        "expert_scorer=toy-fidelity",
        "--set",
        "expert_top_k=4",
    ]
    result = rerun(env, args)
    assert result.returncode == 0, result.stderr[-3000:]
    return env, args, leaderboard_json(env.out)


def test_a_truncated_data_score_table_is_moved_aside_and_scored_again(scored_run) -> None:
    env, args, leaderboard = scored_run
    [table] = (env.cache / "data-scores").glob("*/toy-fidelity.sqlite")
    cut_short(table)
    for experts in (env.out / "data").glob("experts-*"):  # ranked from the table: made again from it
        shutil.rmtree(experts)
    shutil.rmtree(env.out / "models" / "dro")
    result = rerun(env, args)
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = warnings(result)
    assert f"{table} was damaged" in line and "only a cache" in line
    assert leaderboard_json(env.out) == leaderboard


def test_a_damaged_results_database_is_one_error_line(damaged: Env) -> None:
    db = damaged.out / "results.db"
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    cut_short(db)
    before = sorted(str(path) for path in damaged.out.rglob("*"))
    result = rerun(damaged)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"harness: error: {db} is damaged (") and "not a cache" in line and "restore it" in line
    assert sorted(str(path) for path in damaged.out.rglob("*")) == before
    found = verify(damaged)
    assert found.returncode == 1 and f"results database {db}: is damaged (" in found.stdout


def test_verify_finds_each_damage_and_repair_fixes_it(damaged: Env, reference) -> None:
    clean = verify(damaged)
    assert clean.returncode == 0 and "no problems" in clean.stdout, clean.stdout + clean.stderr
    feature = sorted((damaged.cache / "train-features").rglob("*.safetensors"))[0]
    cut_short(feature)
    cache = damaged.out / "cache" / "scores.sqlite"
    for companion in cache.parent.glob("scores.sqlite-*"):
        companion.unlink()
    cache.write_bytes(b"not a database " * 1000)
    built = damaged.cache / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors"
    cut_short(built)
    checkpoint = damaged.out / "models" / "dpo" / "checkpoint-2" / "unet.safetensors"
    cut_short(checkpoint)
    table = damaged.cache / "data-scores" / "pairs-train" / "toy-fidelity.sqlite"  # as `harness data score` makes
    table.parent.mkdir(parents=True)
    db = sqlite3.connect(table)
    db.executescript("CREATE TABLE scores (uid TEXT, caption TEXT, value REAL);")
    db.executemany("INSERT INTO scores VALUES (?, ?, ?)", [(f"{n:05d}.png", "x" * 200, n / 7) for n in range(200)])
    db.commit()
    db.close()
    cut_short(table)

    found = verify(damaged)
    assert found.returncode == 1
    for where in (
        f"feature-cache entry {feature}:",
        f"score cache {cache}: damaged",
        f"built model {built.parents[1]}:",
        f"checkpoint {checkpoint.parent}:",
        f"data-score table {table}: damaged",
    ):
        assert where in found.stdout, (where, found.stdout)
    assert "5 problems:" in found.stdout
    repaired = verify(damaged, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "no problems" in repaired.stdout
    assert verify(damaged).returncode == 0
    # The score cache was refilled with the store's scores: a rerun scores nothing and changes nothing.
    result = rerun(damaged)
    assert result.returncode == 0 and warnings(result) == [], result.stdout[-3000:] + result.stderr[-3000:]
    assert leaderboard_json(damaged.out) == reference.fingerprint["leaderboard"]
    with sqlite3.connect(f"{(damaged.out / 'results.db').as_uri()}?mode=ro", uri=True) as store:
        [(record,)] = store.execute("SELECT value FROM meta WHERE key = 'last_verified'")
    assert json.loads(record)["problems"] == 0
