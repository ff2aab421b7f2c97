"""Scorers in their own environments: pinned requirements in a venv of their own, scored through a worker process.

A reward model's package often pins libraries the harness cannot share (old protobuf, transformers 4.x).  Such a
scorer subclasses ``EnvironmentScorer`` and declares a ``ScorerEnvironment``: its pinned requirements and the entry
(``module:callable``) that builds, inside that environment, an object with ``score(images, prompts)``.  The harness
builds the environment once under ``$HARNESS_CACHE/envs/<key>`` (``uv`` when it is on PATH, else ``venv`` and
pip), starts ``harness.scoring._env_worker`` in it and sends it batches of PNGs and prompts over the child's
stdin/stdout.  To the rest of the harness it is a scorer like any other; its ``version`` carries a digest of the
environment, so the score cache never mixes its numbers with another environment's.

Torch: an environment installs its own (pin it in ``requirements``, as an official package's pins demand), or
``inherit_packages=True`` lets it import the harness's packages (torch included) after its own, so its pins win
and nothing heavy is installed twice.

A build runs in ``envs/.building-<key>-<pid>`` and is renamed to ``envs/<key>`` only when complete: an interrupted
build is never taken for a finished one, and the next build removes it.  The venv is moved by that rename; its
interpreter finds it again through ``pyvenv.cfg`` (console scripts' shebangs would not, and are never used).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import io
import json
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from harness.api.environment import cache_dir, say
from harness.api.scorer import Scorer, weights_version
from harness.errors import HarnessError
from harness.scoring._env_worker import ProtocolError, header_length, parse_header, write_message

_MARKER = "harness-env.json"  # written last, inside the build directory, before the rename
# Run through -c, not -m: the stand-ins in tests reach the worker's module (its CHANNEL) by its own name.
_WORKER_MAIN = "import sys; from harness.scoring._env_worker import main; sys.exit(main(sys.argv[1:]))"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `harness` package the worker imports


@dataclass(frozen=True)
class ScorerEnvironment:
    """Where a scorer runs: ``requirements`` (pip requirement strings, pinned: ``pkg==1.2``, a wheel's path),
    ``entry`` (``module:callable`` importable in the environment, called with the scorer's locations as keywords,
    returning an object with ``score(images, prompts) -> list[float]``; the harness package is importable there),
    ``inherit_packages`` (default False: the environment sees only its own packages; True: the harness's packages
    too, after its own).  Pillow must be importable in it (every reward package pulls it)."""

    requirements: tuple[str, ...]
    entry: str
    inherit_packages: bool = False

    def __post_init__(self) -> None:
        if ":" not in self.entry:
            raise HarnessError(f"a scorer environment's entry is module:callable, got {self.entry!r}")

    @property
    def key(self) -> str:
        """The built environment's name: what decides its contents (requirements, Python, inherited packages)."""
        inherited = _site_packages() if self.inherit_packages else ""
        spec = [list(self.requirements), inherited, sys.version_info[:2]]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]

    @property
    def digest(self) -> str:
        """What decides its scores (requirements, inheriting or not, entry): part of the scorer's version."""
        spec = [list(self.requirements), self.inherit_packages, self.entry]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:10]


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def envs_root() -> Path:
    """``$HARNESS_CACHE/envs``: the built environments, their build logs and the workers' logs."""
    return cache_dir() / "envs"


def env_dir(env: ScorerEnvironment) -> Path:
    return envs_root() / env.key


def build_log(env: ScorerEnvironment) -> Path:
    return envs_root() / f"{env.key}.build.log"


def _python(directory: Path) -> Path:
    return directory / "bin" / "python"


def is_built(env: ScorerEnvironment) -> bool:
    """Whether ``env`` is completely built (its marker is written last, before the rename)."""
    directory = env_dir(env)
    return (directory / _MARKER).is_file() and _python(directory).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(env: ScorerEnvironment) -> None:
    """Remove the partial builds of ``env`` whose builder is gone (killed mid-build)."""
    for partial in envs_root().glob(f".building-{env.key}-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _build_commands(target: Path, requirements: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """The build's steps: (what it does, in messages; its command)."""
    uv = shutil.which("uv")
    if uv:
        make = [("creating the venv", [uv, "venv", "--python", sys.executable, str(target)])]
        install = [uv, "pip", "install", "--python", str(_python(target))]
    elif _has_pip():
        # The harness's own pip installs into the new interpreter: no pip to bootstrap in every environment.
        make = [("creating the venv", [_base_python(), "-m", "venv", "--without-pip", str(target)])]
        install = [sys.executable, "-m", "pip", "--python", str(_python(target)), "install"]
    else:
        make = [("creating the venv", [_base_python(), "-m", "venv", str(target)])]
        install = [str(_python(target)), "-m", "pip", "install"]
    if not requirements:
        return make
    if not uv:
        install += ["--disable-pip-version-check", "--progress-bar", "off"]
    return [*make, (f"installing {len(requirements)} requirements", [*install, *requirements])]


def _base_python() -> str:
    return getattr(sys, "_base_executable", sys.executable)


def _has_pip() -> bool:
    return importlib.util.find_spec("pip") is not None


# pip's and uv's lines worth showing as progress (everything goes to the log).
_PROGRESS_WORDS = ("Collecting", "Downloading", "Installing", "Successfully", "Installed", "Resolved", "Prepared")


def build(env: ScorerEnvironment, scorer: str, *, progress: bool = True) -> Path:
    """Build ``env`` (for scorer ``scorer``, named in messages) unless it is built; return its directory.

    A failed command is one ``HarnessError`` naming the scorer and the build log; nothing partial is left."""
    final = env_dir(env)
    if is_built(env):
        return final
    root = envs_root()
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(env)
    partial = root / f".building-{env.key}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    log = build_log(env)
    start = time.monotonic()
    if progress:
        say(f"   scorer {scorer}: building its environment {final} ({len(env.requirements)} requirements); log: {log}")
    try:
        with open(log, "w") as log_file:
            venv, *installs = _build_commands(partial, env.requirements)
            _run_logged(*venv, log_file, scorer, log, progress)
            if env.inherit_packages:
                # Processed by site at start-up: the harness's packages (and their .pth files) after the env's own.
                # Written before the install, so that pip counts them as installed (torch is not installed again).
                (Path(_env_site_packages(partial)) / "_harness_inherit.pth").write_text(
                    f"import site; site.addsitedir({_site_packages()!r})\n"
                )
            for what, command in installs:
                _run_logged(what, command, log_file, scorer, log, progress)
        (partial / _MARKER).write_text(json.dumps({"requirements": list(env.requirements), "entry": env.entry}))
        try:
            partial.rename(final)
        except OSError:
            if not is_built(env):  # not another builder's finished copy: a real failure
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if progress:
        say(f"   scorer {scorer}: environment built in {time.monotonic() - start:.1f} s")
    return final


def _run_logged(what: str, command: list[str], log_file: Any, scorer: str, log: Path, progress: bool) -> None:
    log_file.write(f"$ {' '.join(command)}\n")
    log_file.flush()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    try:
        for line in process.stdout:
            log_file.write(line)
            if progress and line.lstrip().startswith(_PROGRESS_WORDS):
                say(f"   scorer {scorer}: {line.strip()}")
    finally:
        status = process.wait()
    if status != 0:
        raise HarnessError(
            f"scorer {scorer}: building its environment failed: {what} (exit status {status}); log: {log}"
        )


def _env_site_packages(directory: Path) -> str:
    python = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(directory / "lib" / python / "site-packages")


# -- the worker --------------------------------------------------------------------------------------------------
_LIVE: set[EnvironmentWorker] = set()


@atexit.register
def _close_all() -> None:
    for worker in list(_LIVE):
        worker.close()


class EnvironmentWorker:
    """A worker process of scorer ``scorer`` in ``env`` (built first if needed), built with ``locations``.

    ``start_timeout_s``: seconds to build the scorer in the worker; ``batch_timeout_s``: seconds per batch.
    Any failure kills the worker and raises one ``HarnessError`` naming the scorer and the worker's log."""

    def __init__(
        self,
        scorer: str,
        env: ScorerEnvironment,
        locations: dict[str, str],
        *,
        start_timeout_s: float,
        batch_timeout_s: float,
    ) -> None:
        self.scorer, self.batch_timeout_s = scorer, batch_timeout_s
        directory = build(env, scorer)
        logs = envs_root() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{scorer}-{os.getpid()}.log"
        # Only the harness package joins the environment's path, not the harness's other packages.
        self._path_dir = Path(tempfile.mkdtemp(prefix="harness-env-path-"))
        (self._path_dir / "harness").symlink_to(_PACKAGE_DIR)
        child_env = {**os.environ, "PYTHONPATH": str(self._path_dir), "HARNESS_ENV_PARENT": str(os.getpid())}
        with open(self.log, "ab") as log_file:
            self._log_start = log_file.tell()  # this worker's lines: the log is shared by a process's workers
            self.process = subprocess.Popen(
                [str(_python(directory)), "-c", _WORKER_MAIN, env.entry, json.dumps(locations)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=child_env,
                start_new_session=True,  # a Ctrl-C reaches the harness, which ends the worker itself
            )
        _LIVE.add(self)
        self._buffer = b""
        header = self._receive(time.monotonic() + start_timeout_s, f"building the scorer within {start_timeout_s:g} s")
        if "error" in header:
            self._fail(f"its entry failed: {header['error']}")
        if header.get("ready") is not True:
            self._fail(f"the worker sent garbage instead of ready: {json.dumps(header)[:120]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """One float per (image, prompt), computed in the worker."""
        blobs = [_png(image) for image in images]
        deadline = time.monotonic() + self.batch_timeout_s
        buffer = io.BytesIO()
        write_message(buffer, {"prompts": list(prompts)}, blobs)
        self._send(buffer.getvalue(), deadline)
        header = self._receive(deadline, f"a batch of {len(images)} within {self.batch_timeout_s:g} s")
        if "error" in header:
            raise HarnessError(f"scorer {self.scorer} failed on a batch: {header['error']}; log: {self.log}")
        scores = header.get("scores")
        if (
            not isinstance(scores, list)
            or len(scores) != len(images)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores)
        ):
            self._fail(f"the worker sent garbage for {len(images)} images: {json.dumps(header)[:120]}")
        return [float(value) for value in scores]

    def close(self) -> None:
        """End the worker (end of input, then a kill if it does not exit at once) and forget it."""
        _LIVE.discard(self)
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        shutil.rmtree(self._path_dir, ignore_errors=True)

    def _fail(self, what: str) -> None:
        self.process.kill()
        self.process.wait()
        self.close()
        raise HarnessError(f"scorer {self.scorer}: {what}; log: {self.log}")

    def _send(self, data: bytes, deadline: float) -> None:
        fd = self.process.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                self._fail(f"the worker took no input for {self.batch_timeout_s:g} s")
            try:
                view = view[os.write(fd, view) :]
            except BrokenPipeError:
                self._ended()

    def _receive(self, deadline: float, what: str) -> dict:
        try:
            prefix = self._read(4, deadline, what)
            header, sizes = parse_header(self._read(header_length(prefix), deadline, what))
        except ProtocolError as exc:
            self._fail(f"the worker sent garbage ({exc})")
        if sizes:
            self._fail("the worker sent garbage (unexpected binary data)")
        return header

    def _read(self, n: int, deadline: float, what: str) -> bytes:
        fd = self.process.stdout.fileno()
        while len(self._buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self._fail(f"no answer to {what} (hung?)")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._ended()
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _ended(self) -> None:
        status = self.process.wait()
        self._fail(f"the worker exited with status {status}{_last_line(self.log, self._log_start)}")


def _last_line(log: Path, start: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()[:160]})" if lines else ""


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG", compress_level=1)  # lossless: the worker sees the same pixels
    return out.getvalue()


class EnvironmentScorer(Scorer):
    """A scorer computed in its own environment (``environment``); subclasses declare the class attributes of any
    scorer and an ``__init__`` whose keywords (the locations ``--scorer-option`` takes) they pass to this one's.
    The worker starts on the first batch and ends with ``close()`` or the process."""

    environment: ClassVar[ScorerEnvironment]
    start_timeout_s: ClassVar[float] = 900.0  # building the scorer may load gigabytes of weights
    batch_timeout_s: ClassVar[float] = 600.0

    def __init__(self, **locations: Any) -> None:
        self.locations = _given(locations)
        self.version = self.version_for(**locations)
        self.worker: EnvironmentWorker | None = None

    @classmethod
    def version_for(cls, **locations: Any) -> str:
        return f"{weights_version(cls.version, _given(locations), {})}+env-{cls.environment.digest}"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        if self.worker is None:
            self.worker = EnvironmentWorker(
                self.name,
                self.environment,
                self.locations,
                start_timeout_s=self.start_timeout_s,
                batch_timeout_s=self.batch_timeout_s,
            )
        try:
            return self.worker.score(images, prompts)
        except HarnessError:
            self.close()
            raise

    def close(self) -> None:
        """End the worker (a later batch starts a new one)."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def __del__(self) -> None:
        # A scorer dropped by its caller (an evaluation's) ends its worker, not only at the process's exit.
        if getattr(self, "worker", None) is not None:
            self.close()


def _given(locations: dict[str, Any]) -> dict[str, str]:
    """The locations given (as the worker receives them): every value as text, None meaning the default."""
    return {key: str(value) for key, value in locations.items() if value is not None}


def environment_of(scorer_class: type[Scorer]) -> ScorerEnvironment | None:
    """The environment a registered scorer class runs in; None for a native one (the harness's own)."""
    return scorer_class.environment if issubclass(scorer_class, EnvironmentScorer) else None


def describe_environment(scorer_class: type[Scorer]) -> str:
    """One cell of `harness scorers`: native, or the scorer's own environment and whether it is built."""
    env = environment_of(scorer_class)
    if env is None:
        return "native"
    state = "built" if is_built(env) else "not built"
    return f"own env {env.key} ({len(env.requirements)} requirements, {state})"


def build_environments(scorers: list[str] | tuple[str, ...], registry: Any) -> None:
    """Build the environments of ``scorers`` (names in ``registry``) that have one and are not built yet."""
    for name in dict.fromkeys(scorers):
        env = environment_of(registry.get(name))
        if env is not None:
            build(env, name)
