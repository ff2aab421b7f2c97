"""`harness ARGV` run through ``harness.cli.main`` in the test's own process.

A fresh process of the installed command spends seconds importing torch and diffusers before it reads its
arguments; tests of what a command does (not of processes: kills, signals, the entry point's exit status)
run it here instead, as the command would run it: in its working directory, with its environment, its
output read from both ``sys.stdout``/``sys.stderr`` and file descriptors 1 and 2.  What a command changes in
the process is put back afterwards, so one command cannot reach the next: the working directory, the
environment, torch's thread count, and the plugins it loaded (their registrations and modules); and what the
command left for garbage collection is collected, as its process's exit would end it (an SQLite connection
left unreferenced checkpoints its write-ahead log into the database when it is finalized).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _captured(fd: int, stream: str) -> Iterator[list[str]]:
    """What Python code writes to ``sys.<stream>`` and what anything writes to file descriptor ``fd``, as
    one string appended to the yielded list on exit."""
    written = io.StringIO()
    text: list[str] = []
    with tempfile.TemporaryFile() as descriptor:
        getattr(sys, stream).flush()
        saved = os.dup(fd)
        os.dup2(descriptor.fileno(), fd)
        redirect = contextlib.redirect_stdout if stream == "stdout" else contextlib.redirect_stderr
        try:
            with redirect(written):
                yield text
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            descriptor.seek(0)
            text.append(written.getvalue() + descriptor.read().decode(errors="replace"))


@contextlib.contextmanager
def _restored_process_state(cwd: Path | None, env: dict[str, str] | None) -> Iterator[None]:
    import torch

    from harness.api import registry

    registries = [value for value in vars(registry).values() if isinstance(value, registry.Registry)]
    for each in registries:
        each.names()  # loaded now: a registry first loaded inside the command would not load again
    entries = [dict(each._entries) for each in registries]
    plugins, modules = list(registry._LOADED_PLUGINS), set(sys.modules)
    directory, environ, threads = Path.cwd(), dict(os.environ), torch.get_num_threads()
    os.environ.update(env or {})
    os.chdir(cwd or directory)
    try:
        yield
    finally:
        gc.collect()
        os.chdir(directory)
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        for each, kept in zip(registries, entries):
            each._entries = kept
        registry._LOADED_PLUGINS[:] = plugins
        for name in set(sys.modules) - modules:
            if name.startswith("harness_plugin_"):  # load_plugin's names: a later load runs the file again
                del sys.modules[name]


def harness_main(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``harness ARGV`` in this process, in ``cwd`` (default: the current directory) with ``env`` added to
    the environment: its exit status and output as ``subprocess.run(..., capture_output=True, text=True)``
    gives them.  An exception that escapes ``main`` is written as the installed command would write it,
    a traceback on stderr and status 1."""
    from harness.cli import main

    with _restored_process_state(cwd, env), _captured(1, "stdout") as out, _captured(2, "stderr") as err:
        try:
            status = main(list(argv))
        except SystemExit as exit:  # argparse's errors and --help
            status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except Exception:  # whatever escapes main: the traceback a user would see
            traceback.print_exc()
            status = 1
    return subprocess.CompletedProcess(["harness", *argv], status, out[0], err[0])
