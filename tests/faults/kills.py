"""Helpers of the fault tests: start the CLI (forked from this process) in its own process group, SIGKILL the
whole group at a chosen point, run the CLI in this process where its process is not what a test is about, read
the work log of ``work_log_plugin.py``, and describe what a results directory holds (to compare a resumed run
with an uninterrupted one, and to see what a rerun touched)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

import harness.scoring
from harness.cli import main
from harness.scoring.cache import ScoreCache
from harness.train.trainer import Trainer
from support.cli import harness_main

PLUGIN = Path(__file__).with_name("work_log_plugin.py")
# The runs of the suite: two methods that train (DRO also samples from its policy while training),
# checkpoints every two of the four steps, so a kill mid-training resumes from a checkpoint.
METHODS = "dpo,dro"
TRAINING = ("--set", "max_steps=4", "--set", "checkpoint_every=2")


@dataclass(frozen=True)
class Env:
    """Where a chain of runs keeps its state: results directory, HARNESS_CACHE, work log."""

    out: Path
    cache: Path
    log: Path

    @classmethod
    def fresh(cls, root: Path) -> Env:
        root.mkdir(parents=True, exist_ok=True)
        return cls(out=root / "out", cache=root / "cache", log=root / "work.jsonl")

    def variables(self) -> dict[str, str]:
        return {**os.environ, "HARNESS_CACHE": str(self.cache), "FAULTS_WORK_LOG": str(self.log)}


def run_args(env: Env, jobs: int, methods: str = METHODS) -> list[str]:
    return [
        "--plugin",
        str(PLUGIN),
        "run",
        "--preset",
        "tiny",
        "--methods",
        methods,
        *TRAINING,
        "--jobs",
        str(jobs),
        "--out",
        str(env.out),
    ]


class Started:
    """`harness ARGS` in a child of this process, in a new session (its workers share its process group, which the
    kill takes whole): the installed command's ``main`` in a fork, which has torch and the harness imported
    already, where a fresh process of the command spends seconds importing them before it reads its arguments.
    Its stdout is the pipe ``stdout``; its stderr is appended to a file.  What the tests use of
    ``subprocess.Popen``: ``pid``, ``stdout``, ``poll``, ``wait``, ``communicate`` and ``returncode``."""

    def __init__(self, args: list[str], variables: dict[str, str], stderr: Path, cwd: Path | None = None) -> None:
        read, write = os.pipe()
        with open(stderr, "a") as err:
            self.pid = os.fork()
            if self.pid == 0:
                _run_child(args, variables, write, err.fileno(), cwd)  # never returns
        os.close(write)
        self.stdout = open(read, encoding="utf-8")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N: ended by signal N, as Popen says
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"harness (pid {self.pid})", timeout)
            time.sleep(0.01)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        """Everything the run prints until the last process holding its stdout ends, then its exit status."""
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(self.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            raise subprocess.TimeoutExpired(f"harness (pid {self.pid})", timeout)
        self.wait(timeout)
        return out[0], None


def _run_child(args: list[str], variables: dict[str, str], stdout: int, stderr: int, cwd: Path | None) -> None:
    """In the forked child: what the installed command's process would be, then its exit (``os._exit``: this
    process's exit handlers, pytest's, are not the command's)."""
    status = 1
    try:
        os.setsid()
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        sys.stdout = open(1, "w", closefd=False)  # block-buffered on a pipe, as the command's stdout is
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(variables)
        os.chdir(cwd or os.getcwd())
        status = main(args)
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:  # what escapes main: the traceback the command would print
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def kill_group(process: Started) -> None:
    """SIGKILL every process of the group, then wait until none of them is left running."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    deadline = time.monotonic() + 30
    while _live_members(process.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {process.pid} survived SIGKILL: {_live_members(process.pid)}")
        time.sleep(0.02)


def _live_members(group: int) -> list[int]:
    """Processes of ``group`` that are not zombies (a killed worker is reaped by init, not by us)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class Outcome:
    stages: list[str]  # the "== stage  [N s]" lines the run printed
    killed: bool  # by us, at the point asked for (not ended before it)
    returncode: int


def _collect_stages(stdout, stages: list[str]) -> None:
    for line in stdout:
        if line.startswith("== "):
            stages.append(line.strip())


def run_and_kill(
    args: list[str],
    variables: dict[str, str],
    stderr: Path,
    log: WorkLog,
    reached: Callable[[list[str], list[dict]], bool],
    delay: float = 0.0,
    timeout: float = 600,
) -> Outcome:
    """Run until ``reached(stage lines printed, work-log events logged)`` holds, wait ``delay`` seconds,
    then SIGKILL the whole process group."""
    process = Started(args, variables, stderr)
    stages: list[str] = []
    reader = threading.Thread(target=_collect_stages, args=(process.stdout, stages), daemon=True)
    reader.start()
    hit = ended_first = False
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if reached(list(stages), log.since_mark()):
                hit = True
                time.sleep(delay)
                break
            time.sleep(0.01)
        ended_first = process.poll() is not None
    finally:
        kill_group(process)
        reader.join(timeout=30)  # the pipe ends with the last process of the group
        process.stdout.close()
    return Outcome(stages, killed=hit and not ended_first, returncode=process.returncode)


# What work_log_plugin.py replaces in the process that loads it, besides every module's ``get_scorer``.
_REPLACED = [
    (UNet2DConditionModel, "forward"),
    (ScoreCache, "put"),
    (Trainer, "_optimizer_step"),
    (Trainer, "make_batch"),
    (torch, "save"),
]


_here = False  # a command of harness_here is running


def _forked() -> None:
    """In a worker forked by a command of harness_here: ``sys.stdout`` and ``sys.stderr`` are the command's
    in-memory copies (``support.cli``), which no one reads in a child; the worker writes to file descriptors 1
    and 2 instead, as a worker of the installed command does (and the command reads those)."""
    if _here:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def _flush_before_fork() -> None:
    if _here:  # what is still buffered would be written twice, by the parent and by the child
        sys.__stdout__.flush()
        sys.__stderr__.flush()


os.register_at_fork(before=_flush_before_fork, after_in_child=_forked)


def harness_here(args: list[str], variables: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`harness ARGS` in this process (``support.cli``), for the commands whose process is not what a test is
    about: a fresh process spends seconds importing torch before it reads its arguments.  What the work-log
    plugin replaced is put back afterwards: the next command here loads the plugin again, and would wrap the
    wrappers (logging each event twice)."""
    global _here
    originals = [(owner, name, getattr(owner, name)) for owner, name in _REPLACED]
    get_scorer = harness.scoring.get_scorer
    _here = True
    try:
        return harness_main(*args, cwd=cwd, env=variables)
    finally:
        _here = False
        for owner, name, original in originals:
            setattr(owner, name, original)
        # The plugin replaced get_scorer in the modules that had it; modules imported since took the replacement.
        for module in list(sys.modules.values()):
            held = getattr(module, "__dict__", {}).get("get_scorer")
            if held is not get_scorer and callable(held) and inspect.unwrap(held) is get_scorer:
                module.get_scorer = get_scorer


def run_here(args: list[str], variables: dict[str, str], stderr: Path, cwd: Path | None = None) -> Outcome:
    """A run to its end in this process (``harness_here``), its stderr appended to ``stderr``."""
    result = harness_here(args, variables, cwd)
    with open(stderr, "a") as err:
        err.write(result.stderr)
    stages = [line.strip() for line in result.stdout.splitlines() if line.startswith("== ")]
    return Outcome(stages, killed=False, returncode=result.returncode)


def leaderboard_json(out: Path) -> str:
    """What `harness leaderboard --out OUT --format json` prints (run in this process)."""
    result = harness_main("leaderboard", "--out", str(out), "--format", "json")
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- what a run left --------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(root: Path, pattern: str) -> dict[str, str]:
    return {str(path.relative_to(root)): _sha256(path) for path in sorted(root.glob(pattern)) if path.is_file()}


def results_fingerprint(env: Env) -> dict[str, object]:
    """Everything a finished run's numbers come from, byte for byte: the leaderboard (as `harness
    leaderboard --format json` prints it), the trained UNets, every image, the training data and
    the cached training features (VAE posteriors, text embeddings)."""
    return {
        "leaderboard": leaderboard_json(env.out),
        "unets": _hashes(env.out / "models", "*/final/unet/*.safetensors"),
        "images": _hashes(env.out / "images", "*/*/*.png"),
        "data": {**_hashes(env.out / "data", "*.jsonl"), **_hashes(env.out / "data", "images/*.png")},
        "features": _hashes(env.cache / "train-features", "**/*.safetensors"),
    }


def temporaries(*roots: Path) -> list[str]:
    """Files or directories left under a temporary name (``.NAME.tmp``, ``.NAME.PID.tmp``, ``NAME.tmp``)."""
    return sorted(str(path) for root in roots for path in root.rglob("*.tmp"))


@dataclass
class DoneAtKill:
    """What a killed run had finished: a rerun must not redo any of it."""

    images: dict[str, tuple[int, int]]  # recorded image file -> (inode, mtime_ns)
    scores: dict[str, set[tuple[str, str, str, str]]]  # score cache file -> its keys
    checkpoints: dict[str, int | None]  # trainer output dir -> latest complete checkpoint (None: finished)

    def __str__(self) -> str:
        trainings = {
            Path(model).name: "finished" if step is None else f"checkpoint {step}"
            for model, step in self.checkpoints.items()
        }
        scores = sum(len(keys) for keys in self.scores.values())
        return f"{len(self.images)} images, {scores} scores, trainings: {trainings}"


def done_at_kill(env: Env) -> DoneAtKill:
    return DoneAtKill(
        images=_recorded_images(env.out), scores=_cached_scores(env.out), checkpoints=_checkpoints(env.out)
    )


def image_files(out: Path) -> dict[str, tuple[int, int]]:
    """Every image of a results directory (evaluation and training data) -> (inode, mtime_ns)."""
    files = [*out.glob("images/*/*/*.png"), *out.glob("data/images/*.png")]
    return {str(path): (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}


def stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Every file of the trained models and images (relative to ``out``) -> (inode, mtime_ns): equal before
    and after a rerun that rewrote none of them."""
    files = [path for path in out.glob("models/**/*") if path.is_file()]
    stamps = {str(path.relative_to(out)): (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}
    return {**stamps, **{str(Path(path).relative_to(out)): stamp for path, stamp in image_files(out).items()}}


def _recorded_images(out: Path) -> dict[str, tuple[int, int]]:
    """Images that count as done (``harness.evaluation.sampling``'s layout): a manifest or journal row whose
    file is on disk with the recorded sha256.  A file written but not yet recorded is redone."""
    files = image_files(out)
    done = {}
    for folder in {Path(path).parent for path in files}:
        rows = []
        for journal in [folder / "manifest.jsonl", *sorted(folder.glob(".manifest-parts/*.jsonl"))]:
            if journal.exists():
                for line in journal.read_text(encoding="utf-8").splitlines():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a row half written when the run was killed
        for row in rows:
            path = folder / row["path"]
            if str(path) in files and _sha256(path) == row["sha256"]:
                done[str(path)] = files[str(path)]
    return done


def _cached_scores(out: Path) -> dict[str, set[tuple[str, str, str, str]]]:
    caches = {}
    for path in [out / "cache" / "scores.sqlite", out / "data" / "scores.sqlite"]:
        if path.exists():
            db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
            try:
                caches[str(path)] = set(db.execute("SELECT image_sha256, prompt_sha256, scorer, version FROM scores"))
            finally:
                db.close()
    return caches


def _checkpoints(out: Path) -> dict[str, int | None]:
    latest: dict[str, int | None] = {}
    for model in sorted((out / "models").glob("*")):
        if (model / "final" / "trainer_state.json").exists():
            latest[str(model)] = None
            continue
        steps = [int(p.name.split("-")[1]) for p in model.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
        latest[str(model)] = max(steps, default=0)
    return latest


# -- the work log ---------------------------------------------------------------------------------------
class WorkLog:
    """The events ``work_log_plugin.py`` appended; ``mark()`` then ``since_mark()`` isolates one run's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            lines = log.read().decode("utf-8").splitlines()
        # A worker killed mid-write leaves at most a partial last line.
        return [json.loads(line) for line in lines if line.endswith("}")]


def count(events: list[dict], event: str) -> int:
    return sum(1 for e in events if e["event"] == event)


def redone_work(done: DoneAtKill, events: list[dict], after: dict[str, tuple[int, int]]) -> list[str]:
    """What the run that logged ``events`` redid of the work ``done`` records (empty: nothing)."""
    problems = []
    rewritten = sorted(path for path, stamp in done.images.items() if after.get(path) != stamp)
    if rewritten:
        problems.append(f"{len(rewritten)} finished images rewritten, e.g. {rewritten[0]}")
    rescored = [
        e
        for e in events
        if e["event"] == "cached"
        and (e["image"], e["prompt"], e["scorer"], e["version"]) in done.scores.get(e["cache"], set())
    ]
    if rescored:
        problems.append(f"{len(rescored)} cached scores computed again, e.g. {rescored[0]}")
    for model, latest in done.checkpoints.items():
        steps = [e["step"] for e in events if e["event"] == "step" and e["phase"] == "begin" and e["out"] == model]
        if latest is None and steps:
            problems.append(f"{model} was trained again after it had finished: steps {steps}")
        elif latest is not None and steps and steps != list(range(latest, latest + len(steps))):
            problems.append(f"{model} resumed at step {steps[0]}, not after its checkpoint {latest}: steps {steps}")
    return problems
