"""A sweep: every (candidate, task, seed, learning rate) of a comparison, run where missing.

Finished records (status ok or diverged) are reused; a run that failed (raised) is retried on the
next sweep, since a crash says nothing about the candidate's quality. Each record is written the
moment its run ends, so an interrupted sweep resumes where it stopped.

Runs are single-threaded (see ``harness.train.TRAIN_THREADS``), so ``jobs`` worker processes use
``jobs`` cores and a run's result does not depend on how many ran beside it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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


def current_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Records a ``compare`` would reuse today: same id as the run the current code would plan
    (default hyperparameters, the tier's settings, the candidate's current source). Returns
    ``(current, n_stale)``; records of unknown candidates or tasks count as stale."""
    expected: dict[tuple, str | None] = {}
    current, stale = [], 0
    for r in records:
        key = (
            r.get("candidate"),
            r.get("task"),
            r.get("tier"),
            r.get("seed"),
            r.get("lr"),
            r.get("identity", {}).get("device"),
        )
        if key not in expected:
            try:
                spec = RunSpec(
                    candidate=key[0], task=key[1], tier=key[2], seed=key[3], lr=key[4], device=key[5] or "cpu"
                )
                expected[key] = resolve(spec).run_id
            except (KeyError, ValueError, TypeError):
                expected[key] = None
        if expected[key] == r.get("run_id"):
            current.append(r)
        else:
            stale += 1
    return current, stale


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask for SIGTERM when the sweep's process dies, so a killed
    sweep leaves no orphan trainers behind (their unfinished runs would be lost anyway)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _execute_spec(spec: RunSpec) -> dict[str, Any]:
    """Worker entry point: resolve in the worker (plug-ins load there too) and train."""
    return execute(resolve(spec))


def longest_first(runs: list[ResolvedRun]) -> list[ResolvedRun]:
    """Order runs by their training tokens (steps x batch x length), most first, stably.

    With a few workers, a long run started last leaves the other workers idle while it finishes;
    starting the long tasks first (longest-processing-time scheduling) keeps that tail short.
    The cost of a step grows with the tokens it processes for every candidate, so the order is
    known before any run has been timed.
    """

    def tokens(run: ResolvedRun) -> int:
        return run.tier.steps * run.tier.batch_size * run.task.seq_len

    return sorted(runs, key=tokens, reverse=True)


def _results_in_order_of_completion(todo: list[ResolvedRun], jobs: int) -> Iterator[dict[str, Any]]:
    if jobs <= 1 or len(todo) <= 1:
        for run in todo:
            yield execute(run)
        return
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_die_with_parent
    ) as pool:
        pending: set[Future] = set()
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < jobs:
                pending.add(pool.submit(_execute_spec, queue.pop(0).spec))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()


def run_sweep(
    runs: list[ResolvedRun],
    store: RecordStore,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
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
    if progress and result.reused:
        print(f"{result.reused} of {len(runs)} runs reused from {store.runs}", file=sys.stderr)
    bar = tqdm(
        total=len(todo),
        desc="runs",
        unit="run",
        disable=not progress or not todo,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for record in _results_in_order_of_completion(longest_first(todo), jobs):
        store.save(record)
        bar.update(1)
        bar.set_postfix_str(f"last: {record['candidate']} / {record['task']} / seed {record['seed']}")
        result.records.append(record)
        result.ran += 1
        if record["status"] == "failed":
            result.failed.append(record)
            tqdm.write(
                f"FAILED {record['candidate']} on {record['task']}: {record['error']}", file=sys.stderr
            )
        elif record["status"] == "diverged":
            result.diverged.append(record)
            tqdm.write(
                f"diverged: {record['candidate']} on {record['task']} (lr {record['lr']:g})", file=sys.stderr
            )
    bar.close()
    result.seconds = time.perf_counter() - t0
    return result
