"""`harness train` SIGKILLed during an optimizer step and during a checkpoint write, then resumed: the
final weights are those of an uninterrupted run and no temporary is left behind.

The settings make a lossy resume visible: a linear LR schedule with warm-up (a scheduler restarted
from zero would apply other learning rates), two micro-steps per optimizer step (a kill between
them leaves accumulated gradients that only memory held), AdamW moments and EMA weights (both in
the checkpoint).  Both kills land at exact points, held open by ``work_log_plugin.py``'s gate: a
kill that waits for ``.checkpoint-N.tmp`` to appear would hit the few milliseconds of the write only
by chance, and the gate needs no hook in the trainer itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faults.kills import PLUGIN, WorkLog, run_and_kill, temporaries
from harness.train.trainer import train
from support.train_fixtures import one_torch_thread, write_pair_dir  # noqa: F401 (autouse fixture: one thread, as below)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SETTINGS = {
    "max_steps": 6,
    "checkpoint_every": 2,
    "batch_size": 2,
    "grad_accum": 2,
    "lr": 1e-3,
    "lr_scheduler": "linear",
    "warmup_steps": 3,
    "ema_decay": 0.9,
}


def steps(events: list[dict], phase: str) -> list[int]:
    return [e["step"] for e in events if e["event"] == "step" and e["phase"] == phase]


def gates(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "gate"]


def complete_checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def test_training_killed_mid_step_and_mid_checkpoint_resumes_to_the_same_weights(
    tiny_model_dir, harness_cache, tmp_path
):
    data = write_pair_dir(tmp_path / "data")
    overrides = SETTINGS  # on top of the tiny preset's settings, as `harness train --preset tiny --set ...`

    def train_here(output_dir: Path, on_log=None):
        return train(
            "dpo",
            base_model=tiny_model_dir,
            data_dir=data,
            output_dir=output_dir,
            preset="tiny",
            overrides=overrides,
            on_log=on_log,
        )

    straight = train_here(tmp_path / "straight")

    out = tmp_path / "killed"
    args = [
        "--plugin",
        str(PLUGIN),
        "train",
        "--method",
        "dpo",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--model",
        str(tiny_model_dir),
        *[arg for name, value in SETTINGS.items() for arg in ("--set", f"{name}={value}")],
    ]
    log = WorkLog(tmp_path / "work.jsonl")
    stderr = tmp_path / "stderr.txt"

    def variables(gate: str = "") -> dict[str, str]:
        # One thread, as the uninterrupted run above: CPU kernels split their sums by thread count.
        return {
            **os.environ,
            "HARNESS_CACHE": str(harness_cache),
            "FAULTS_WORK_LOG": str(log.path),
            "FAULTS_GATE": gate,
            "OMP_NUM_THREADS": "1",
        }

    def killed_at_gate(gate: str) -> dict:
        """Run with ``gate`` (see work_log_plugin.py), SIGKILL the process group there; the gate's event."""
        log.mark()
        outcome = run_and_kill(args, variables(gate), stderr, log, lambda _, events: bool(gates(events)))
        assert outcome.killed, stderr.read_text()[-3000:]
        return gates(log.since_mark())[0]

    # Killed in optimizer step 3 (0-based), after its first micro-step's backward: checkpoint-2 is on
    # disk, step 2 and half of step 3 only in memory.
    gate = killed_at_gate("micro:3:1")
    work = log.since_mark()
    assert (gate["step"], gate["micro"]) == (3, 1)
    assert steps(work, "begin") == [0, 1, 2, 3] and steps(work, "end") == [0, 1, 2]
    assert complete_checkpoints(out) == ["checkpoint-2"] and not (out / "final").exists()

    # Resumed from checkpoint-2 (steps 0 and 1 are not redone), then killed while writing
    # checkpoint-4: its weights written, half of its optimizer state, no trainer_state.json.
    gate = killed_at_gate("checkpoint:4:optimizer.pt")
    work = log.since_mark()
    assert steps(work, "begin") == [2, 3] and steps(work, "end") == [2, 3]
    partial = out / ".checkpoint-4.tmp"
    assert Path(gate["file"]) == partial / "optimizer.pt"
    assert 0 < (partial / "optimizer.pt").stat().st_size < gate["size"]
    assert (partial / "unet.safetensors").exists() and not (partial / "trainer_state.json").exists()
    assert complete_checkpoints(out) == ["checkpoint-2"]

    # Resumed again from checkpoint-2 (the half-written checkpoint-4 is not one) to the end, here.
    resumed_steps: list[int] = []
    resumed = train_here(out, on_log=lambda step, _: resumed_steps.append(step))
    assert resumed_steps == [3, 4, 5, 6]  # 1-based: optimizer steps 2 to 5
    for name in (
        "final/unet/diffusion_pytorch_model.safetensors",
        "checkpoint-6/unet.safetensors",
        "checkpoint-6/ema.safetensors",
    ):
        expected, got = load_file(str(tmp_path / "straight" / name)), load_file(str(out / name))
        assert expected.keys() == got.keys()
        assert [k for k in expected if not torch.equal(expected[k], got[k])] == [], name
    assert complete_checkpoints(out) == ["checkpoint-4", "checkpoint-6"]
    assert temporaries(out) == []
    assert resumed.unet_evals_per_sample == pytest.approx(straight.unet_evals_per_sample)
