"""A harness plugin for the fault tests: it records the work a process does, and can hold it at one point.

Loaded like any user plugin (``harness --plugin tests/faults/work_log_plugin.py run ...``; forked
workers inherit it), it wraps a few functions of the harness and of diffusers, without changing
what they compute, and appends one JSON line per event to the file named by ``$FAULTS_WORK_LOG``:

    {"event": "unet"}                                  a UNet forward (training, sampling, DRO's sampler)
    {"event": "score", "scorer": ..., "images": n}     a scorer's score() call on n images
    {"event": "cached", "cache": path, "image": sha256, "prompt": sha256, "scorer": ..., "version": ...}
                                                       a score computed and stored in a score cache
    {"event": "step", "phase": "begin" | "end", "out": trainer output dir, "step": n}
                                                       an optimizer step of the trainer (0-based)
    {"event": "gate", "gate": ...}                     the process reached $FAULTS_GATE (below)

``$FAULTS_GATE`` holds the process at a point a test wants to SIGKILL it at, which would otherwise
last only milliseconds: ``micro:S:M`` at the start of micro-step M of optimizer step S (the earlier
micro-steps' gradients are accumulated in memory, nothing of step S is applied), or
``checkpoint:N:FILE`` in the middle of writing FILE of checkpoint N (half of its bytes on disk, in
``.checkpoint-N.tmp``).  The process logs the gate and sleeps until it is killed.  With ``$FAULTS_GATE_RANK``
only that process of a multi-process training stops there (torchrun's ``RANK``); the others go on into the
step's collectives and wait for it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

import harness.scoring
import harness.train.trainer
from harness.scoring.cache import ScoreCache

LOG = os.environ["FAULTS_WORK_LOG"]
GATE = os.environ.get("FAULTS_GATE", "")
GATE_RANK = os.environ.get("FAULTS_GATE_RANK")


def record(event: str, **fields) -> None:
    # One short line per write, in append mode: lines of concurrent workers do not interleave.
    line = json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n"
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(line)


def wait_to_be_killed(**where) -> None:
    record("gate", gate=GATE, **where)
    time.sleep(600)
    raise RuntimeError(f"gate {GATE} was not killed within 600 s")


def counted_forward(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        record("unet")
        return forward(self, *args, **kwargs)

    return wrapper


def counted_get_scorer(get_scorer):
    @functools.wraps(get_scorer)
    def wrapper(name, **locations):
        scorer = get_scorer(name, **locations)
        score = scorer.score

        def counted_score(images, prompts):
            record("score", scorer=scorer.name, images=len(images))
            return score(images, prompts)

        scorer.score = counted_score
        return scorer

    return wrapper


def counted_put(put):
    @functools.wraps(put)
    def wrapper(self, scorer, entries):
        entries = list(entries)
        for key, prompt, _ in entries:
            record(
                "cached",
                cache=str(self.path),
                image=key,
                prompt=hashlib.sha256(prompt.encode()).hexdigest(),
                scorer=scorer.name,
                version=scorer.version,
            )
        return put(self, scorer, entries)

    return wrapper


def logged_step(optimizer_step):
    @functools.wraps(optimizer_step)
    def wrapper(self, step, params):
        record("step", phase="begin", out=str(self.output_dir), step=step)
        terms = optimizer_step(self, step, params)
        record("step", phase="end", out=str(self.output_dir), step=step)
        return terms

    return wrapper


def gated_make_batch(make_batch, step: int, micro: int):
    @functools.wraps(make_batch)
    def wrapper(self, at_step, at_micro, generator):
        if (at_step, at_micro) == (step, micro) and GATE_RANK in (None, os.environ.get("RANK")):
            wait_to_be_killed(out=str(self.output_dir), step=at_step, micro=at_micro)
        return make_batch(self, at_step, at_micro, generator)

    return wrapper


def gated_save(save, checkpoint: int, name: str):
    @functools.wraps(save)
    def wrapper(obj, f, *args, **kwargs):
        path = Path(f) if isinstance(f, (str, os.PathLike)) else None
        if path is None or (path.parent.name, path.name) != (f".checkpoint-{checkpoint}.tmp", name):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(path, "wb") as out:
            out.write(data[: len(data) // 2])
        wait_to_be_killed(file=str(path), written=len(data) // 2, size=len(data))

    return wrapper


UNet2DConditionModel.forward = counted_forward(UNet2DConditionModel.forward)
# Every module that imported get_scorer holds its own reference (the CLI imported them before loading this plugin).
_counted_get_scorer = counted_get_scorer(harness.scoring.get_scorer)
for _module in [m for m in sys.modules.values() if getattr(m, "get_scorer", None) is harness.scoring.get_scorer]:
    _module.get_scorer = _counted_get_scorer
ScoreCache.put = counted_put(ScoreCache.put)
harness.train.trainer.Trainer._optimizer_step = logged_step(harness.train.trainer.Trainer._optimizer_step)
if GATE.startswith("micro:"):
    _, step, micro = GATE.split(":")
    harness.train.trainer.Trainer.make_batch = gated_make_batch(
        harness.train.trainer.Trainer.make_batch, int(step), int(micro)
    )
elif GATE.startswith("checkpoint:"):
    _, checkpoint, name = GATE.split(":")
    torch.save = gated_save(torch.save, int(checkpoint), name)
elif GATE:
    raise ValueError(f"unknown FAULTS_GATE {GATE!r}")
