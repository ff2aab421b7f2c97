"""`harness verify --out DIR`: a results directory and the caches it reads, checked end to end (as `git fsck`).

What is checked: ``results.db`` (SQLite's integrity check; the record, which nothing rebuilds), every image
against its manifest's sha256 and the store's, every stored score against the score cache, every
checkpoint and ``final/`` network (each weights file loaded, each JSON file parsed), the Ray backend's
journals (each line a whole write), and in ``$HARNESS_CACHE`` every training-feature entry, data-score
table, built model and hub suite copy.

``--repair`` does what a rerun would: a damaged cache entry is discarded (computed again when next read),
a damaged SQLite cache moved aside (the score cache refilled from the store, whose scores are the same
numbers), a damaged built model built again, a score the cache and the store disagree on taken from the
cache (as a rerun's scoring does), a damaged checkpoint or ``final/`` removed (the rerun trains from the
checkpoint before).  Images and journals are remade by rerunning the command that made them (a rerun finds
damaged images by hash): verify says so and counts them as left.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.api.caching import built_model_damage, safetensors_intact
from harness.api.environment import say
from harness.api.suite import cached_copy_intact
from harness.cache_db import damage, open_cache_db
from harness.errors import HarnessError
from harness.plan.locations import is_built_model, resolve_base_model
from harness.plan.presets import get_preset
from harness.results.layout import ResultsDir
from harness.results.store import Store
from harness.scoring.cache import ScoreCache, image_sha256, text_sha256

RERUN = "rerun the command that made it (a rerun redoes only what is missing)"


@dataclass
class Problem:
    what: str  # the kind of thing: "image", "score", "checkpoint", ...
    where: str  # its path (or key)
    detail: str
    repair: Callable[[], str] | None = None  # fixes it and says how; None: only a rerun can

    def line(self) -> str:
        return f"{self.what} {self.where}: {self.detail}"


@dataclass
class Report:
    checked: Counter = field(default_factory=Counter)  # kind of thing -> how many were checked
    problems: list[Problem] = field(default_factory=list)

    def add(self, *problem_fields, repair: Callable[[], str] | None = None) -> None:
        self.problems.append(Problem(*problem_fields, repair=repair))

    def summary(self) -> str:
        return "checked: " + ", ".join(f"{kind} {n}" for kind, n in self.checked.items())


def verify(out: Path, cache_root: Path) -> Report:
    """Every check; nothing is changed."""
    results = ResultsDir(out)
    if not results.db.exists():
        raise HarnessError(f"no results in {out}: {results.db} does not exist")
    report = Report()
    report.checked["results database"] += 1
    images = scores = None
    try:
        with Store(results.db, readonly=True) as store:
            store.check_intact()
            images, scores = store.images_frame(), store.scores_frame()
    except HarnessError as exc:  # damaged, or not a results database: what it says, once
        report.add("results database", str(results.db), str(exc).removeprefix(f"{results.db} "))
    if images is not None:
        _check_images(results, images, report)
        _check_scores(results, images, scores, report)
    _check_models(results, report)
    _check_journals(results, report)
    _check_caches(cache_root, results, report)
    return report


def _check_images(results: ResultsDir, images, report: Report) -> None:
    """Each manifest row's file against its sha256, and each stored image against its manifest's row."""
    manifests: dict[str, str] = {}  # image path relative to the results directory -> manifest sha256
    for manifest in sorted(results.root.glob("images/*/*/manifest.jsonl")):
        folder = manifest.parent
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
                path, sha = folder / row["path"], row["sha256"]
            except (ValueError, KeyError, TypeError):
                report.add("manifest", f"{manifest}:{number}", "not a whole row; " + RERUN)
                continue
            manifests[str(path.relative_to(results.root))] = sha
            report.checked["images"] += 1
            if not path.is_file():
                report.add("image", str(path), "missing; " + RERUN)
            elif image_sha256(path) != sha:
                report.add("image", str(path), "its bytes differ from the manifest's sha256; " + RERUN)
    for row in images.itertuples():
        if manifests.get(row.path) not in (None, row.sha256):
            report.add(
                "image", str(results.file(row.path)), "the store records another sha256 than its manifest; " + RERUN
            )
        elif row.path not in manifests:
            report.add("image", str(results.file(row.path)), "recorded in the store but in no manifest; " + RERUN)


@dataclass(frozen=True)
class _ScorerIdentity:
    """What ``ScoreCache.put`` reads of a scorer."""

    name: str
    version: str
    scale: str


def _check_scores(results: ResultsDir, images, scores, report: Report) -> None:
    """Each stored score against the score cache's value for the same image content, prompt and scorer version."""
    cache = results.score_cache
    keyed = scores.merge(
        images[["run_id", "suite", "prompt_id", "image_index", "prompt", "sha256"]],
        on=["run_id", "suite", "prompt_id", "image_index"],
        how="inner",
    )
    report.checked["scores"] += len(keyed)
    if not cache.exists():
        if len(keyed):
            report.add("score cache", str(cache), "missing", repair=lambda: _refill_score_cache(results))
        return
    report.checked["score cache"] += 1
    problem = damage(cache)
    if problem is not None:
        report.add("score cache", str(cache), f"damaged ({problem})", repair=lambda: _refill_score_cache(results))
        return
    db = sqlite3.connect(f"{cache.resolve().as_uri()}?mode=ro", uri=True)
    try:
        cached = {
            (image, prompt, scorer, version): value
            for image, prompt, scorer, version, value in db.execute(
                "SELECT image_sha256, prompt_sha256, scorer, version, value FROM scores"
            )
        }
    finally:
        db.close()
    for row in keyed.itertuples():
        value = cached.get((row.sha256, text_sha256(row.prompt), row.metric, row.metric_version))
        where = f"{row.method}/{row.suite}/{row.prompt_id}#{row.image_index} {row.metric} {row.metric_version}"
        if value is None:
            report.add(
                "score", where, "not in the score cache", repair=lambda row=row: _cache_stored_score(results, row)
            )
        elif value != row.value:
            report.add(
                "score",
                where,
                f"the store has {row.value!r}, the score cache {value!r}",
                repair=lambda row=row, value=value: _store_cached_score(results, row, value),
            )


def _refill_score_cache(results: ResultsDir) -> str:
    """Move a damaged score cache aside (``ScoreCache`` does) and fill it with the store's scores."""
    with Store(results.db, readonly=True) as store:
        images, scores = store.images_frame(), store.scores_frame()
    keyed = scores.merge(
        images[["run_id", "suite", "prompt_id", "image_index", "prompt", "sha256"]],
        on=["run_id", "suite", "prompt_id", "image_index"],
        how="inner",
    )
    with ScoreCache(results.score_cache) as cache:
        for (metric, version, scale), rows in keyed.groupby(["metric", "metric_version", "scale"]):
            cache.put(_ScorerIdentity(metric, version, scale), zip(rows["sha256"], rows["prompt"], rows["value"]))
    return f"rebuilt from the store's {len(keyed)} scores"


def _cache_stored_score(results: ResultsDir, row) -> str:
    with ScoreCache(results.score_cache) as cache:
        cache.put(_ScorerIdentity(row.metric, row.metric_version, row.scale), [(row.sha256, row.prompt, row.value)])
    return "the store's value cached"


def _store_cached_score(results: ResultsDir, row, value: float) -> str:
    with Store(results.db) as store:
        store.add_scores(
            row.run_id,
            suite=row.suite,
            rows=[
                {
                    "prompt_id": row.prompt_id,
                    "image_index": row.image_index,
                    "scorer": row.metric,
                    "version": row.metric_version,
                    "scale": row.scale,
                    "higher_is_better": bool(row.higher_is_better),
                    "value": value,
                }
            ],
        )
    return "the score cache's value stored (as a rerun's scoring does)"


def _check_models(results: ResultsDir, report: Report) -> None:
    """Every checkpoint and final/ of every trained method: each weights file loads, each JSON file parses."""
    for folder in sorted([*results.root.glob("models/*/checkpoint-*"), *results.root.glob("models/*/final")]):
        kind = "final network" if folder.name == "final" else "checkpoint"
        report.checked[f"{kind}s"] += 1
        problem = _model_folder_damage(folder)
        if problem is not None:
            report.add(kind, str(folder), problem, repair=lambda folder=folder: _remove(folder))


def _model_folder_damage(folder: Path) -> str | None:
    from safetensors.torch import load_file

    if not (folder / "trainer_state.json").exists():
        return "no trainer_state.json (it was not written to the end)"
    for file in sorted(folder.rglob("*")):
        if file.suffix == ".safetensors":
            try:
                if not safetensors_intact(file):
                    raise ValueError("not a whole safetensors file")
                load_file(str(file))
            except Exception as exc:  # safetensors' own error type included
                return f"{file.relative_to(folder)} does not load ({exc})"
        elif file.suffix == ".json":
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                return f"{file.relative_to(folder)} does not parse ({exc})"
    return None


def _remove(folder: Path) -> str:
    shutil.rmtree(folder)
    return "removed: the next run of the same command trains it again from the checkpoint before"


def _check_journals(results: ResultsDir, report: Report) -> None:
    """The Ray backend's journals of store writes: each line a whole write (the last may be half written)."""
    for journal in sorted(results.ray_journals.glob("*.jsonl")):
        report.checked["journals"] += 1
        lines = journal.read_text(encoding="utf-8").split("\n")[:-1]
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                entry["write"], entry["args"], entry["kwargs"]
            except (ValueError, KeyError, TypeError):
                report.add("journal", f"{journal}:{number}", "not a whole write; " + RERUN)
                break


def _check_caches(cache_root: Path, results: ResultsDir, report: Report) -> None:
    for entry in sorted((cache_root / "train-features").rglob("*.safetensors")):
        report.checked["feature-cache entries"] += 1
        if not safetensors_intact(entry):
            report.add(
                "feature-cache entry",
                str(entry),
                "not a whole safetensors file",
                repair=lambda entry=entry: _discard(entry),
            )
    for table in sorted((cache_root / "data-scores").glob("*/*.sqlite")):
        report.checked["data-score tables"] += 1
        problem = damage(table)
        if problem is not None:
            report.add(
                "data-score table", str(table), f"damaged ({problem})", repair=lambda table=table: _set_aside(table)
            )
    for index in sorted(cache_root.glob("*/model_index.json")):
        report.checked["built models"] += 1
        problem = built_model_damage(index.parent)
        if problem is not None:
            report.add("built model", str(index.parent), problem, repair=lambda: _rebuild_models(results))
    for copy in sorted((cache_root / "suites").glob("*.jsonl")):
        report.checked["hub suite copies"] += 1
        if not cached_copy_intact(copy):
            report.add(
                "hub suite copy",
                str(copy),
                "its content is not what was downloaded",
                repair=lambda copy=copy: _discard(copy, copy.with_name(copy.name + ".sha256")),
            )


def _discard(*paths: Path) -> str:
    for path in paths:
        path.unlink(missing_ok=True)
    return "discarded: computed again when next needed"


def _set_aside(table: Path) -> str:
    open_cache_db(table, "").close()  # moves the damaged file aside, leaves an empty table
    return "moved aside: the data step that reads it scores the images again"


def _rebuild_models(results: ResultsDir) -> str:
    """Build again the built base models of the directory's runs (a damaged one is removed first)."""
    with Store(results.db, readonly=True) as store:
        presets = set(store.runs_frame()["preset"].dropna())
    built = sorted({get_preset(name).base_model for name in presets if is_built_model(get_preset(name).base_model)})
    for name in built:
        resolve_base_model(name)
    return f"built again ({', '.join(built)})" if built else "not a base model of this directory's runs: left"


def run_verify(out: Path, repair: bool, cache_root: Path) -> int:
    """`harness verify`: the summary, the problems (and with ``repair`` what was done), recorded in the store;
    exit status 1 if any problem is left."""
    report = verify(out, cache_root)
    say(report.summary())
    if repair and report.problems:
        for problem in report.problems:
            outcome = problem.repair() if problem.repair is not None else "left: " + RERUN
            say(f"  {problem.line()} -> {outcome}")
        report = verify(out, cache_root)
        say("after repair: " + report.summary())
    if report.problems:
        say(f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}:")
        for problem in report.problems:
            say(f"  {problem.line()}")
    else:
        say("no problems")
    _record(out, report)
    return 1 if report.problems else 0


def _record(out: Path, report: Report) -> None:
    if any(problem.what == "results database" for problem in report.problems):
        return  # nothing to write into
    try:
        with Store(ResultsDir(out).db) as store:
            store.set_verified(
                {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "problems": len(report.problems),
                    "checked": dict(report.checked),
                }
            )
    except HarnessError as exc:
        print(f"harness: warning: the verification was not recorded: {exc}", file=sys.stderr)
