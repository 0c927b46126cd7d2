"""Quality history: error rates (1 - test token accuracy) of the gate's quality runs.

The runs are ``harness gate``'s quality set, defined once in ``harness/gate/settings.py`` (loaded by
path from this tree, like the timer): deterministic short runs (single-threaded CPU, fixed seeds) of
the smoke backbone (d_model 32, one layer) for 300 steps on associative recall, enough to separate a
working mixer from a broken one in a few seconds per run. Error rates, so that lower is better like
every asv number. A candidate or task missing at an older commit is skipped there; training settings
an older engine does not know (early stopping came later) are left out there.
"""

from __future__ import annotations

import dataclasses

from ._common import this_tree

VERSION = "1"
_GATE = this_tree("gate/settings")
CANDIDATES = list(_GATE.CANDIDATES)
TASKS = list(_GATE.TASKS)
QUALITY = _GATE.QualitySettings()


class ErrorRate:
    params = [CANDIDATES, TASKS]
    param_names = ["candidate", "task"]
    version = VERSION
    unit = "error rate"
    timeout = 600

    def setup(self, candidate: str, task: str) -> None:
        try:
            from harness.registry import RegistryError, get_candidate, get_task
            from harness.train import RunSpec, resolve  # noqa: F401
        except ImportError as e:
            raise NotImplementedError(f"this commit has no training engine: {e}") from e
        try:
            get_candidate(candidate)
            get_task(task)
        except RegistryError as e:
            raise NotImplementedError(str(e)) from e

    def track_test_error(self, candidate: str, task: str) -> float:
        from harness.tiers import TierConfig
        from harness.train import RunSpec, execute, resolve

        known = {f.name for f in dataclasses.fields(TierConfig)}
        spec = RunSpec(
            candidate, task, QUALITY.tier, seed=QUALITY.seed, train_overrides=QUALITY.train_overrides(known)
        )
        record = execute(resolve(spec))
        if record["status"] == "diverged":
            return 1.0
        if record["status"] != "ok":
            raise RuntimeError(f"{candidate} on {task}: {record.get('error')}")
        return 1.0 - float(record["test"]["token_acc"])
