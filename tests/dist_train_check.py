"""Run by tests/test_train_distributed.py under `torchrun --nproc_per_node 2`.

Trains each method for two steps (two micro-batches each) with the real trainer
and, after every optimizer step, gathers the trainable parameters of both
processes and fails unless they are bit-identical.  One process pair for all
methods: start-up is most of the cost on a CPU.
Usage: dist_train_check.py METHODS(comma-separated) BASE_MODEL DATA_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from harness.api.registry import METHODS
from harness.train.trainer import Trainer, resolve_config


class CheckedTrainer(Trainer):
    @property
    def method_name(self) -> str:
        return type(self.method).__name__.lower()

    def _optimizer_step(self, step, params):
        terms = super()._optimizer_step(step, params)
        flat = torch.cat([p.detach().flatten() for p in params.values()])[None]
        gathered = self.accelerator.gather(flat)
        assert gathered.shape[0] == 2, f"expected 2 processes, got {gathered.shape[0]}"
        assert torch.equal(gathered[0], gathered[1]), f"parameters differ across ranks after step {step + 1}"
        if self.accelerator.is_main_process:
            print(
                f"{self.method_name} step {step + 1}: parameters identical on both ranks; loss {terms['loss']:.5f}",
                flush=True,
            )
        return terms


def main() -> None:
    methods, base_model, data_dir, out_dir = sys.argv[1:5]
    for method in methods.split(","):
        overrides = {
            "max_steps": 2,
            "batch_size": 1,
            "grad_accum": 2,
            "lr": 1e-4,
            "scale_lr": False,
            "warmup_steps": 0,
            "checkpoint_every": 1,
        }
        overrides.update({"dro": {"sampler_steps": 4}, "smpo": {"inversion_steps": 3}}.get(method, {}))
        config = resolve_config(method, None, overrides)
        trainer = CheckedTrainer(
            METHODS.get(method)(config),
            base_model=base_model,
            data_dir=Path(data_dir),
            output_dir=Path(out_dir) / method,
            seed=0,
            on_log=None,
        )
        result = trainer.run(resume=False)
        assert trainer.world == 2
        if trainer.accelerator.is_main_process:
            print(f"done {method}: {result.steps} steps", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
