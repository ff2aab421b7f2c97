"""Start the Streamlit dashboard for a results directory (what `harness dashboard` calls)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError
from harness.results.experiments import Experiment
from harness.results.layout import ResultsDir

APP = Path(__file__).with_name("app.py")


Shown = Path | Sequence[Experiment]  # a results directory, or several side by side (harness.results.experiments)


def _experiments(shown: Shown) -> list[Experiment]:
    if isinstance(shown, (str, Path)):
        return [Experiment(Path(shown).resolve().name, ResultsDir(shown))]
    return list(shown)


def command(shown: Shown, port: int, host: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line that serves a results directory (or several) on ``host:port``."""
    experiments = _experiments(shown)
    if len(experiments) == 1:
        outs = ["--out", str(experiments[0].results.root.resolve())]
    else:
        outs = [arg for e in experiments for arg in ("--out", f"{e.name}={e.results.root.resolve()}")]
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        # No telemetry, no file watcher (nothing here is edited live), no browser auto-open.
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        # A read-only local tool: the toolbar without the developer's items ("Deploy" among them).
        "--client.toolbarMode",
        "viewer",
        "--",
        *outs,
    ]


def check_results_dir(results_dir: Path) -> None:
    if not ResultsDir(results_dir).db.is_file():
        raise HarnessError(f"no results in {results_dir} (run `harness run --out {results_dir}` first)")


def start(shown: Shown, port: int, host: str = "127.0.0.1") -> subprocess.Popen:
    """Start the dashboard in the background (e.g. from a notebook); stop it with ``terminate()``."""
    for experiment in _experiments(shown):
        check_results_dir(experiment.results.root)
    return subprocess.Popen(command(shown, port, host))


def serve(shown: Shown, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Serve the dashboard until interrupted; returns Streamlit's exit status (0 on Ctrl-C).

    A SIGTERM to this process is passed on to Streamlit, so stopping `harness dashboard`
    never leaves a server behind.
    """
    server = start(shown, port, host)
    where = ", ".join(str(e.results.root) for e in _experiments(shown))
    print(f"dashboard for {where} on http://{host}:{port} (Ctrl-C stops it)", flush=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        return server.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached Streamlit too (same process group); wait for it to finish shutting down.
        server.terminate()
        server.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
