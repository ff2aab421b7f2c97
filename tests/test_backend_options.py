"""`--backend` / `--address` mistakes: one line, exit 2, nothing created (no Ray cluster needed)."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from harness.cli import main

RUN = ["run", "--preset", "tiny", "--methods", "dpo"]
# The address is checked once Ray is found importable.
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--address", "auto"], "--address names a Ray cluster: use it with --backend ray"),
        (
            ["--backend", "ray", "--jobs", "2"],
            "--jobs sizes the local pool; on Ray the cluster's free GPUs (CPUs) decide",
        ),
        pytest.param(
            ["--backend", "ray", "--address", "head-node"],
            "--address 'head-node': expected auto or HOST:PORT",
            marks=needs_ray,
        ),
        pytest.param(
            ["--backend", "ray", "--address", "127.0.0.1:{port}"],
            "--address 127.0.0.1:{port}: no Ray cluster answers there",
            marks=needs_ray,
        ),
    ],
)
def test_backend_mistakes_are_one_line_before_anything_is_created(args, message, tmp_path, capsys):
    port = _closed_port()
    args = [arg.format(port=port) for arg in args]
    out = tmp_path / "out"
    assert main([*RUN, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: " + message.format(port=port)) and err.count("\n") == 1
    assert not out.exists()
