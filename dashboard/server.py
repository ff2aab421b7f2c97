"""Start the Streamlit dashboard for a results directory (what `harness dashboard` calls)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.results import ResultsDir

APP = Path(__file__).with_name("app.py")


def command(results_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line that serves ``results_dir`` on ``host:port``."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        # No telemetry, no file watcher (nothing here is edited live), no browser auto-open.
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        # A read-only local tool: the toolbar without the developer's items ("Deploy" among them).
        "--client.toolbarMode", "viewer",
        "--",
        "--out", str(Path(results_dir).resolve()),
    ]


def check_results_dir(results_dir: Path) -> None:
    if not ResultsDir(results_dir).db.is_file():
        raise HarnessError(f"no results in {results_dir} (run `harness run --out {results_dir}` first)")


def start(results_dir: Path, port: int, host: str = "127.0.0.1") -> subprocess.Popen:
    """Start the dashboard in the background (e.g. from a notebook); stop it with ``terminate()``."""
    check_results_dir(results_dir)
    return subprocess.Popen(command(results_dir, port, host))


def serve(results_dir: Path, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Serve the dashboard until interrupted; returns Streamlit's exit status (0 on Ctrl-C).

    A SIGTERM to this process is passed on to Streamlit, so stopping `harness dashboard`
    never leaves a server behind.
    """
    server = start(results_dir, port, host)
    print(f"dashboard for {results_dir} on http://{host}:{port} (Ctrl-C stops it)", flush=True)
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
