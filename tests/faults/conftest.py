"""The uninterrupted reference run every fault trial is compared with."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from faults.kills import Env, WorkLog, results_fingerprint, run_args, run_here


@dataclass
class Reference:
    env: Env
    fingerprint: dict
    work: list[dict]  # what the run did, from the work log


# For the session, not the package: `make test`'s workers take files of other folders between this one's, and a
# package's fixture is made again each time a worker comes back to it.
@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """`harness run --preset tiny --methods dpo,dro --jobs 2` once, uninterrupted, from a fresh
    HARNESS_CACHE (a first run: base model, training data and features are all made here), in this process."""
    env = Env.fresh(tmp_path_factory.mktemp("reference"))
    outcome = run_here(run_args(env, jobs=2), env.variables(), env.out.parent / "stderr.txt")
    assert outcome.returncode == 0, (env.out.parent / "stderr.txt").read_text()[-3000:]
    return Reference(env, results_fingerprint(env), WorkLog(env.log).since_mark())
