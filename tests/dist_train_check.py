"""Run by tests/test_train_distributed.py under `torchrun --nproc_per_node 2`.

Trains each method named for each preset in turn, two optimizer steps of two micro-batches, with the real trainer
and the preset's own settings, and after every optimizer step gathers the trainable parameters of both processes
and fails unless they are bit-identical; it prints how far they moved from the base.  Then both processes generate
the sampling tests' case suite with GENERATION_MODEL into OUT_DIR/generated (tests/generate_worker.py), in batches
of 2.  One process pair for all of it: start-up (torch, diffusers, the process group) is most of the cost on a CPU.
Usage: dist_train_check.py DATA_DIR OUT_DIR GENERATION_MODEL PRESET=BASE_MODEL:METHOD,METHOD ...
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from harness.api.registry import METHODS
from harness.train.trainer import Trainer, resolve_config

# The fewest passes that still train: two steps of two micro-batches of one sample, a checkpoint after each.
SHORT = {"max_steps": 2, "batch_size": 1, "grad_accum": 2, "checkpoint_every": 1}
# Inner loops the tiny recipes leave at their published length, cut short.
CHEAPER = {"dro": {"sampler_steps": 4}, "smpo": {"inversion_steps": 3}}


class CheckedTrainer(Trainer):
    label = ""  # "PRESET METHOD", for the lines printed

    def _optimizer_step(self, step, params):
        flat = _flat(params)
        if step == 0:
            self.start = flat
        terms = super()._optimizer_step(step, params)
        flat = _flat(params)
        gathered = self.accelerator.gather(flat[None])
        assert gathered.shape[0] == 2, f"expected 2 processes, got {gathered.shape[0]}"
        assert torch.equal(gathered[0], gathered[1]), (
            f"{self.label}: parameters differ across ranks after step {step + 1}"
        )
        if self.accelerator.is_main_process:
            moved = (flat - self.start).abs().max().item()
            print(
                f"{self.label} step {step + 1}: parameters identical on both ranks; moved {moved:.3e}; "
                f"loss {terms['loss']:.5f}",
                flush=True,
            )
        return terms


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params.values()])


def _generate_worker():
    """tests/generate_worker.py, loaded from its file: tests/ is not on sys.path here (tests/methods would shadow
    the methods)."""
    spec = importlib.util.spec_from_file_location("generate_worker", Path(__file__).with_name("generate_worker.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    data_dir, out_dir, generation_model, *trainings = sys.argv[1:]
    for training in trainings:
        preset_and_base, methods = training.rsplit(":", 1)
        preset, base_model = preset_and_base.split("=", 1)
        for method in methods.split(","):
            config = resolve_config(method, preset, {**SHORT, **CHEAPER.get(method, {})})
            trainer = CheckedTrainer(
                METHODS.get(method)(config),
                base_model=base_model,
                data_dir=Path(data_dir),
                output_dir=Path(out_dir) / preset / method,
                seed=0,
                on_log=None,
            )
            trainer.label = f"{preset} {method}"
            result = trainer.run(resume=False)
            assert trainer.world == 2
            if trainer.accelerator.is_main_process:
                print(f"done {preset} {method}: {result.steps} steps", flush=True)
    worker = _generate_worker()
    worker.generate_case(generation_model, Path(out_dir) / "generated", 2, worker.SETTINGS["images_per_prompt"])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
