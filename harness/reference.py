"""Reference rows: what a column's numbers mean against guessing.

For each task (at a tier): *chance* (a uniform guess over the task's answers, ``1 / n_labels``) and
every *trivial predictor* the task declares (``Task.trivial_predictors``: rules with no lookup or
state tracking, such as the most frequent label, the most frequent label at each position, or
MQAR's position-only guess), each fitted on training data and scored on the test split exactly as
a candidate is: the same score (extrapolation for tasks with a length axis, test token accuracy
otherwise). The best of them is the row a candidate must clearly beat for its score to mean
anything. Computed from the task alone, in well under a second per task.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.registry import get_task
from harness.splits import split_seed, train_generator
from harness.task import IGNORE, Batch, Task

#: examples the predictors are fitted on, and scored on (per length)
N_FIT = 4096
N_SCORE = 4096


@dataclass(frozen=True)
class Reference:
    name: str
    score: float  # the task's ranking score (extrapolation or test token accuracy)
    in_dist: float  # in-distribution test token accuracy
    by_length: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskReference:
    task: str
    chance: float | None
    trivial: tuple[Reference, ...]

    @property
    def best(self) -> Reference | None:
        return max(self.trivial, key=lambda r: r.score) if self.trivial else None

    @property
    def best_in_dist(self) -> Reference | None:
        return max(self.trivial, key=lambda r: r.in_dist) if self.trivial else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "chance": self.chance,
            "trivial": [r.__dict__ for r in self.trivial],
            "best": None if self.best is None else self.best.name,
        }


def _accuracy(pred: torch.Tensor, targets: torch.Tensor, from_pos: int = 0) -> tuple[int, int]:
    mask = targets != IGNORE
    mask[:, :from_pos] = False
    return int(((pred == targets) & mask).sum()), int(mask.sum())


def _score(task: Task, predictor, batch: Batch, from_pos: int = 0) -> float:
    correct, total = _accuracy(predictor.predict(batch), batch.targets, from_pos)
    return correct / max(total, 1)


def compute(task_name: str, task: Task) -> TaskReference:
    """The reference rows of one configured task (deterministic: fixed seeds)."""
    fit_batch = task.generate(N_FIT, train_generator(task_name, 0))
    test = task.generate(N_SCORE, torch.Generator().manual_seed(split_seed(task_name, "test", 0)))
    at_lengths = {
        L: task.generate(
            N_SCORE, torch.Generator().manual_seed(split_seed(task_name, f"test@{L}", 0)), length=L
        )
        for L in task.test_lengths()
    }
    rows = []
    for name, predictor in task.trivial_predictors().items():
        predictor.fit(fit_batch)
        by_length = {str(L): _score(task, predictor, b, from_pos=task.seq_len) for L, b in at_lengths.items()}
        in_dist = _score(task, predictor, test)
        score = sum(by_length.values()) / len(by_length) if by_length else in_dist
        rows.append(Reference(name, score, in_dist, by_length))
    chance = 1.0 / task.n_labels if task.n_labels else None
    return TaskReference(task_name, chance, tuple(rows))


@functools.lru_cache(maxsize=64)
def _cached(task_name: str, config_json: str) -> TaskReference:
    cls = get_task(task_name).cls
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(config_json).items()}
    return compute(task_name, cls(cls.Config(**values)))


def reference_for(task_name: str, config: dict[str, Any]) -> TaskReference:
    """The reference rows of ``task_name`` configured by ``config`` (a record's ``task_config``)."""
    return _cached(task_name, json.dumps(config, sort_keys=True, default=list))


def reference_for_tier(task_name: str, tier: str) -> TaskReference:
    return reference_for(task_name, get_task(task_name).cls.from_tier(tier).config_dict())
