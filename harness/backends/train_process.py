"""One process of a multi-process training (``harness.backends.jobs.train_in_processes``), started by torch's
elastic launcher: ``python -m harness.backends.train_process EXCHANGE``.

It reads the job (and the plugins to load) from ``EXCHANGE/job.pickle``, joins the process group (gloo on a CPU,
one thread; NCCL on GPUs) and trains with ``train_logged``; the first process writes the training log to the
results store and ``EXCHANGE/result.pickle``.  A HarnessError is written to ``EXCHANGE/error-<rank>.txt`` for the
launching job to report as its one line, any other error's traceback to ``EXCHANGE/traceback-<rank>.txt``.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from pathlib import Path

import torch

from harness.api.registry import load_plugin
from harness.atomic import replacing
from harness.backends.jobs import train_logged
from harness.distributed import rank_and_size, torchrun_process_group
from harness.errors import HarnessError
from harness.libraries import quiet_libraries
from harness.results.layout import ResultsDir
from harness.results.store import Store
from harness.workers import one_cpu_thread


def main(exchange: Path) -> int:
    job, plugins = pickle.loads((exchange / "job.pickle").read_bytes())
    for plugin in plugins:
        load_plugin(plugin)
    quiet_libraries()
    if not torch.cuda.is_available():
        # One thread, as every job on a CPU: accelerate otherwise sets cores / processes threads (and says so).
        os.environ["OMP_NUM_THREADS"] = "1"
    with torchrun_process_group(), one_cpu_thread(on_gpu=torch.cuda.is_available()):
        rank, _ = rank_and_size()
        try:
            if rank:
                train_logged(job, None)
                return 0
            with Store(ResultsDir(job.plan.options.out).db) as store:
                result = train_logged(job, store)
            with replacing(exchange / "result.pickle") as temporary:
                temporary.write_bytes(pickle.dumps(result))
        except HarnessError as exc:
            (exchange / f"error-{rank}.txt").write_text(str(exc), encoding="utf-8")
            raise SystemExit(2) from None
        except Exception:
            # Often only the consequence of another process's failure (a collective's peer gone): the launching
            # job prints the one that caused it.
            (exchange / f"traceback-{rank}.txt").write_text(traceback.format_exc(), encoding="utf-8")
            raise SystemExit(1) from None
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
