"""A plugin for tests/test_ray_backend.py: a Ray worker SIGKILLs itself in the middle of a job, once at each
of two points, and Ray must retry the job: a task runs again, an actor restarts and its call runs again.

The points: a DPO training at its second loss (a task: its first step half done, its first store writes
recorded), a ``toy-fidelity`` scorer's first call (an actor).  The first process to reach a point creates
``$RAY_KILL_MARKERS/<point>`` and dies; no other process dies there after it.  Only Ray's workers die:
the driver makes the toy world's training data with the same scorers.
"""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import ray

import toyworld.scorers
from methods.dpo import DPO

MARKERS = Path(os.environ["RAY_KILL_MARKERS"])
# A Ray worker loads the plugin connected to its cluster; the driver, before it starts or joins one.
IN_A_RAY_WORKER = ray.is_initialized()
_calls: dict[str, int] = {}  # point -> times this process reached it


def _die_once_at(point: str, call: int) -> None:
    _calls[point] = _calls.get(point, 0) + 1
    if _calls[point] != call or not IN_A_RAY_WORKER:
        return
    try:
        (MARKERS / point).open("x").close()
    except FileExistsError:  # a worker died here already
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at(owner: object, name: str, point: str, call: int) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        _die_once_at(point, call)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


_kill_at(DPO, "loss", "training", call=2)
_kill_at(toyworld.scorers.ToyFidelity, "score", "scoring", call=1)
