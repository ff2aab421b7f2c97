"""`harness dashboard`: the Streamlit leaderboard on 127.0.0.1."""

from __future__ import annotations

import argparse

from dashboard.server import serve
from harness.cli import options
from harness.cli.parser import Commands


def cmd_dashboard(args: argparse.Namespace) -> int:
    return serve(options.experiments(args), port=args.port)


def register(commands: Commands) -> None:
    p = commands.add("dashboard", cmd_dashboard)
    options.add_results_compared(p)
    p.add_argument("--port", type=int, default=8501, help="the port on 127.0.0.1 to serve on")
