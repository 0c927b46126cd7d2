"""Quality history: error rates (1 - test token accuracy) of a small fixed set of training runs.

Deterministic short runs (single-threaded CPU, fixed seeds): the smoke backbone (d_model 32, one
layer) trained for 300 steps on associative recall, enough to separate a working mixer from a
broken one in a few seconds per run. Error rates, so that lower is better like every asv number.
A candidate or task missing at an older commit is skipped there.
"""

from __future__ import annotations

VERSION = "1"
CANDIDATES = ["softmax", "linear-attention", "diagonal"]
TASKS = ["associative-recall"]
TIER = "smoke"
TRAIN = {"steps": 300, "batch_size": 32, "n_valid": 64, "n_test": 512, "eval_batch": 256}


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
        from harness.train import RunSpec, execute, resolve

        record = execute(resolve(RunSpec(candidate, task, TIER, seed=0, train_overrides=dict(TRAIN))))
        if record["status"] == "diverged":
            return 1.0
        if record["status"] != "ok":
            raise RuntimeError(f"{candidate} on {task}: {record.get('error')}")
        return 1.0 - float(record["test"]["token_acc"])
