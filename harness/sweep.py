"""A sweep: every (candidate, task, seed, learning rate) of a comparison, run where missing.

Finished records (status ok or diverged) are reused; a run that failed (raised) is retried on the
next sweep, since a crash says nothing about the candidate's quality. Each record is written the
moment its run ends, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from harness.registry import get_task
from harness.results import RecordStore
from harness.tiers import get_tier
from harness.train import ResolvedRun, RunSpec, execute, resolve

REUSABLE = ("ok", "diverged")


@dataclass
class SweepResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    reused: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    diverged: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def plan(
    candidates: list[str],
    tasks: list[str],
    tier: str,
    n_seeds: int | None = None,
    seeds: list[int] | None = None,
    lrs: list[float] | None = None,
    hparams: dict[str, dict[str, Any]] | None = None,
    task_overrides: dict[str, dict[str, Any]] | None = None,
    train_overrides: dict[str, Any] | None = None,
    device: str = "cpu",
) -> list[ResolvedRun]:
    """Resolve every run of the sweep up front, so a bad name fails before any training."""
    tier_cfg = get_tier(tier)
    if seeds is None:
        seeds = list(range(n_seeds if n_seeds is not None else tier_cfg.n_seeds))
    runs = []
    for task in tasks:
        task_cls = get_task(task).cls
        task_lrs = lrs or list(tier_cfg.with_overrides(task_cls.train_overrides(tier)).lrs)
        for cand in candidates:
            for seed in seeds:
                for lr in task_lrs:
                    spec = RunSpec(
                        candidate=cand,
                        task=task,
                        tier=tier,
                        seed=seed,
                        lr=lr,
                        hparams=(hparams or {}).get(cand, {}),
                        task_overrides=(task_overrides or {}).get(task, {}),
                        train_overrides=train_overrides or {},
                        device=device,
                    )
                    runs.append(resolve(spec))
    return runs


def run_sweep(
    runs: list[ResolvedRun], store: RecordStore, force: bool = False, progress: bool = True
) -> SweepResult:
    result = SweepResult()
    t0 = time.perf_counter()
    todo: list[ResolvedRun] = []
    for run in runs:
        existing = None if force else store.get("train", run.run_id)
        if existing is not None and existing.get("status") in REUSABLE:
            result.records.append(existing)
            result.reused += 1
        else:
            todo.append(run)
    bar = tqdm(
        todo,
        desc="runs",
        unit="run",
        disable=not progress or not todo,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for run in bar:
        bar.set_postfix_str(f"{run.spec.candidate} / {run.spec.task} / seed {run.spec.seed} / lr {run.lr:g}")
        record = execute(run)
        store.save(record)
        result.records.append(record)
        result.ran += 1
        if record["status"] == "failed":
            result.failed.append(record)
            tqdm.write(f"FAILED {run.spec.candidate} on {run.spec.task}: {record['error']}", file=sys.stderr)
        elif record["status"] == "diverged":
            result.diverged.append(record)
            tqdm.write(f"diverged: {run.spec.candidate} on {run.spec.task} (lr {run.lr:g})", file=sys.stderr)
    result.seconds = time.perf_counter() - t0
    return result
