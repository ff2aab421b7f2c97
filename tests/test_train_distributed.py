"""Two CPU processes (torchrun, gloo): every method trains with identical parameters on both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.train_fixtures import write_expert_dir, write_pair_dir

SCRIPT = Path(__file__).with_name("dist_train_check.py")


METHODS = ("dpo", "smpo", "dro", "sft")


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical(tiny_model_dir, tmp_path):
    data = write_expert_dir(write_pair_dir(tmp_path / "data"))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            ",".join(METHODS),
            str(tiny_model_dir),
            str(data),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for method in METHODS:
        for step in (1, 2):
            assert f"{method} step {step}: parameters identical on both ranks" in result.stdout
        assert f"done {method}: 2 steps" in result.stdout
        assert (tmp_path / "out" / method / "final" / "unet" / "config.json").exists()
