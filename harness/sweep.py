"""A sweep: every (candidate, task) cell of a comparison, its seeds and learning rates, run where
missing.

Each cell chooses its learning rate on valid (``harness.scoring.choose_rate``) under one of two
schemes:
  - ``first-seed`` (the default): the first seed runs at every rate of the grid; the rate that wins
    on valid is then run with the remaining seeds. ``len(lrs) + len(seeds) - 1`` runs a cell.
  - ``grid``: every seed at every rate, the rate chosen by the mean over seeds. ``len(lrs) *
    len(seeds)`` runs a cell.
Follow-up runs are scheduled the moment a cell's selection runs are done, so the workers never wait
for the whole grid.

Finished records (status ok or diverged) are reused. A run that failed (it raised, or its worker
died: a signal, an OOM kill, a segfault) is a ``failed`` record; the next sweep tries it again, up
to ``retries`` times (default 1), counted in the record's ``attempts``, and then leaves it failed, so
one bad candidate never blocks a sweep. Each record is written the moment its run ends, so an
interrupted sweep resumes where it stopped.

Where runs execute is an executor's business (``harness.executors``: this process, local worker
processes, or Ray tasks); the loop here keeps as many runs in flight as the executor can hold,
longest first, and writes every record itself. A per-run lock (``harness.locks``) keeps two sweeps
on one store from training the same run at the same time: the second reuses the first's record.

Runs are single-threaded (see ``harness.training.TRAIN_THREADS``), so ``jobs`` worker processes use
``jobs`` cores and a run's result does not depend on how many ran beside it.
"""

from __future__ import annotations

import heapq
import itertools
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any

from harness.locks import RunLocks, release
from harness.progress import progress_bar
from harness.results import RecordStore
from harness.scoring import choose_rate
from harness.train import ResolvedRun, RunSpec, execute, failed_record, resolve, task_tier
from harness.variants import canonical_name

REUSABLE = ("ok", "diverged")
SCHEMES = ("first-seed", "grid")
#: seconds between looks at runs another sweep on the same store holds
LOCK_POLL_S = 0.5


@dataclass(frozen=True)
class CellPlan:
    """One (candidate, task) of a sweep: the seeds, the rate grid and how the rate is chosen."""

    base: RunSpec  # candidate, task, tier and settings; seed and lr are filled in per run
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    scheme: str = "first-seed"

    @property
    def key(self) -> tuple[str, str]:
        return (self.base.candidate, self.base.task)

    def selection_specs(self) -> list[RunSpec]:
        """The runs the rate is chosen from."""
        seeds = self.seeds if self.scheme == "grid" or len(self.lrs) == 1 else self.seeds[:1]
        return [replace(self.base, seed=s, lr=lr) for s in seeds for lr in self.lrs]

    def followup_specs(self, selection_records: list[dict[str, Any]]) -> list[RunSpec]:
        """The runs left once the rate is chosen (the other seeds at that rate)."""
        done = {r["seed"] for r in selection_records}
        lr, _ = choose_rate(selection_records)
        return [replace(self.base, seed=s, lr=lr) for s in self.seeds if s not in done]

    @property
    def n_runs(self) -> int:
        n_sel = len(self.selection_specs())
        return n_sel + (len(self.seeds) - len({s.seed for s in self.selection_specs()}))


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
    scheme: str = "first-seed",
) -> list[CellPlan]:
    """Every cell of the sweep; each selection run is resolved now, so a bad name or value fails
    before any training."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown rate-selection scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    cells = []
    for task in tasks:
        tier_cfg = task_tier(task, tier, train_overrides)
        task_seeds = tuple(
            seeds if seeds is not None else range(n_seeds if n_seeds is not None else tier_cfg.n_seeds)
        )
        task_lrs = tuple(float(x) for x in (lrs or tier_cfg.lrs))
        for cand in candidates:
            base = RunSpec(
                candidate=canonical_name(cand),
                task=task,
                tier=tier,
                hparams=(hparams or {}).get(cand, {}),
                task_overrides=(task_overrides or {}).get(task, {}),
                train_overrides=train_overrides or {},
                device=device,
            )
            cell = CellPlan(base, task_seeds, task_lrs, scheme)
            for spec in cell.selection_specs():
                resolve(spec)
            cells.append(cell)
    return cells


@dataclass
class SweepResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    reused: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    nonconforming: dict[str, dict[str, Any]] = field(default_factory=dict)  # candidate -> its verdict
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it cannot run here
    left_failed: int = 0  # stored failed runs not tried again (their retries are spent)
    waited: int = 0  # runs found locked by another sweep on the store
    from_other_sweeps: int = 0  # ... whose records that sweep wrote, reused here


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


class WorkerDied(RuntimeError):
    """A worker process ended abruptly (a crash in native code, or killed), taking its runs with it."""

    def __init__(self, specs: list[RunSpec]) -> None:
        self.specs = specs
        names = sorted({f"{s.candidate} on {s.task}" for s in specs})
        super().__init__(
            "a worker process died abruptly (a crash in native code such as a segfault, or killed, e.g. for "
            f"memory) while running {', '.join(names)}; runs finished before it are stored"
        )


def canonical_key(name: str) -> str:
    """A file-name-safe key for a candidate name (variant labels hold brackets, commas, ...)."""
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()[:16]


def budget_tokens(run: ResolvedRun) -> int:
    """Training tokens of a run's whole budget (steps x batch x length): its cost, known up front."""
    return run.tier.steps * run.tier.batch_size * run.task.seq_len


def longest_first(runs: list[ResolvedRun]) -> list[ResolvedRun]:
    """Order runs by their budget's training tokens, most first, stably.

    With a few workers, a long run started last leaves the other workers idle while it finishes;
    starting the long tasks first (longest-processing-time scheduling) keeps that tail short.
    The cost of a step grows with the tokens it processes for every candidate, so the order is
    known before any run has been timed.
    """
    return sorted(runs, key=budget_tokens, reverse=True)


class _Queue:
    """Runs waiting to start, longest budget first; follow-ups join in their place."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, ResolvedRun]] = []
        self._order = itertools.count()

    def push(self, run: ResolvedRun) -> None:
        heapq.heappush(self._heap, (-budget_tokens(run), next(self._order), run))

    def pop(self) -> ResolvedRun:
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._heap)


class _Cells:
    """Tracks each cell's selection runs; when they are all in, yields the cell's follow-ups."""

    def __init__(self, cells: list[CellPlan]) -> None:
        self.cells = cells
        self.waiting: dict[int, dict[str, dict[str, Any] | None]] = {}
        self.cell_of: dict[str, list[int]] = {}
        self.selection: list[ResolvedRun] = []
        for i, cell in enumerate(cells):
            runs = [resolve(s) for s in cell.selection_specs()]
            self.selection.extend(runs)
            self.waiting[i] = dict.fromkeys(r.run_id for r in runs)
            for r in runs:
                self.cell_of.setdefault(r.run_id, []).append(i)

    def record_done(self, record: dict[str, Any]) -> list[ResolvedRun]:
        """Note a finished selection run; the follow-up runs of every cell it completes."""
        out = []
        for i in self.cell_of.get(record["run_id"], []):
            waiting = self.waiting[i]
            waiting[record["run_id"]] = record
            if all(r is not None for r in waiting.values()):
                selection = [r for r in waiting.values() if r is not None]
                out.extend(resolve(s) for s in self.cells[i].followup_specs(selection))
        return out


def gate_conformance(
    cells: list[CellPlan],
    store: RecordStore,
    result: SweepResult,
    progress: bool,
    isolated: bool = False,
    locks: RunLocks | None = None,
) -> list[CellPlan]:
    """The cells of candidates that conform (``harness.conformance``, checked once per candidate
    source hash and stored); the others are noted in ``result.nonconforming`` and never trained.
    ``isolated`` checks in a child process, as parallel sweeps train in worker processes. With
    ``locks``, a candidate another sweep is checking is waited for, and its verdict reused."""
    from harness.conformance import conformance_record

    verdicts = {}
    for name in dict.fromkeys(c.base.candidate for c in cells):
        if progress:
            print(f"conformance: {name} ...", end="\r", file=sys.stderr, flush=True)
        lock = locks.hold("conformance", canonical_key(name)) if locks is not None else None
        try:
            verdicts[name] = conformance_record(name, store, isolated=isolated)
        finally:
            release(lock)
        if verdicts[name]["status"] != "conforms":
            result.nonconforming[name] = verdicts[name]
            first = next((r for r in verdicts[name]["results"] if r["status"] == "fail"), {})
            print(
                f"NONCONFORMING {name}: fails {', '.join(verdicts[name]['failed'])}; not trained, not ranked "
                f"({first.get('check')}: {first.get('detail')}; `harness check {name}` lists every check)",
                file=sys.stderr,
            )
    return [c for c in cells if c.base.candidate not in result.nonconforming]


def _attempts(record: dict[str, Any] | None) -> int:
    """How often a stored run was tried: its ``attempts`` (records from before the field: 1)."""
    if record is None:
        return 0
    return int(record.get("attempts") or 1)


def is_final(record: dict[str, Any], retries: int) -> bool:
    """A stored record a sweep takes as it is: a verdict (ok, diverged), or a failure tried
    ``retries`` times beyond the first (then one bad candidate no longer holds the sweep up)."""
    status = record.get("status")
    return status in REUSABLE or (status == "failed" and _attempts(record) > retries)


def _changed(now: dict[str, Any] | None, before: dict[str, Any] | None) -> bool:
    """Whether the store holds a record written since ``before`` was read (by another sweep)."""
    if now is None:
        return False
    if before is None:
        return True
    return (now.get("finished"), now.get("attempts")) != (before.get("finished"), before.get("attempts"))


def skip_unrunnable(cells: list[CellPlan], result: SweepResult) -> list[CellPlan]:
    """Leave out the cells of candidates that need CUDA when the sweep runs on CPU (with the reason)."""
    from harness.registry import get_candidate

    kept = []
    for cell in cells:
        name = cell.base.candidate
        if cell.base.device.startswith("cpu") and get_candidate(name).needs_cuda:
            if name not in result.skipped:
                result.skipped[name] = "needs CUDA; run it with --device cuda on a machine with a GPU"
                print(f"SKIPPED {name}: {result.skipped[name]}", file=sys.stderr)
            continue
        kept.append(cell)
    return kept


def run_sweep(
    cells: list[CellPlan],
    store: RecordStore,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
    check: bool = True,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    retries: int = 1,
) -> SweepResult:
    """Run every cell's missing runs; with ``check`` (the default) only candidates that conform.

    ``executor``: ``local`` (``jobs`` supervised worker processes; one job runs in this process) or
    ``ray`` (``executor_options``: ``address``, ``cpus_per_run``, ``gpus_per_run``; see
    ``harness.executors``). A run whose worker died is a ``failed`` record with the signal or exit
    code and the node. A stored failed run is tried again up to ``retries`` times (counted in its
    record's ``attempts``), then left failed. Each run is locked in the store while it trains
    (``harness.locks``): a second sweep on the same store reuses its record instead of training it too.
    """
    from harness.executors import make_executor

    result = SweepResult()
    store.remove_stale_temporaries()
    locks = RunLocks(store.root)
    isolated = executor != "local" or jobs > 1
    cells = skip_unrunnable(cells, result)
    if check:
        cells = gate_conformance(cells, store, result, progress, isolated=isolated, locks=locks)
    tracker = _Cells(cells)
    queue = _Queue()
    seen: set[str] = set()
    before: dict[str, dict[str, Any] | None] = {}  # run id -> its stored record when it was queued
    total = sum(cell.n_runs for cell in cells)

    def reuse(record: dict[str, Any]) -> list[ResolvedRun]:
        result.records.append(record)
        result.reused += 1
        if record.get("status") == "failed":
            result.failed.append(record)
            result.left_failed += 1
        return tracker.record_done(record)

    def offer(runs: list[ResolvedRun]) -> None:
        """Reuse what is stored (following up at once), queue the rest."""
        todo = list(runs)
        while todo:
            run = todo.pop(0)
            if run.run_id in seen:
                continue
            seen.add(run.run_id)
            existing = store.get("train", run.run_id)
            if existing is not None and not force and is_final(existing, retries):
                todo.extend(reuse(existing))
            else:
                before[run.run_id] = existing
                queue.push(run)

    offer(tracker.selection)
    if progress and result.reused:
        print(f"{result.reused} of {total} runs reused from {store.runs}", file=sys.stderr)
    if result.left_failed:
        print(
            f"{result.left_failed} run(s) left failed: tried {retries + 1} time(s) already (--retries {retries}; "
            "--force tries them again)",
            file=sys.stderr,
        )
    if not len(queue):
        return result
    ex = make_executor(
        executor, jobs, lambda run: execute(run), **(executor_options or {})
    )  # a lambda: tests patch ``execute``
    bar = progress_bar(max(total - result.reused, 0), "runs", enabled=progress, unit="run")

    def shrink_bar(n: int) -> None:  # runs found stored: fewer left to train
        if n:
            bar.total = max(bar.total - n, bar.n)
            bar.refresh()

    inflight: dict[Future, tuple[ResolvedRun, Any]] = {}
    waiting: dict[str, ResolvedRun] = {}  # runs another sweep on this store is training

    def start(run: ResolvedRun) -> bool:
        """Lock and submit ``run``, or reuse the record another sweep just wrote; False when another
        sweep holds its lock."""
        lock = locks.try_acquire("train", run.run_id)
        if lock is None:
            return False
        now = store.get("train", run.run_id)
        if _changed(now, before.get(run.run_id)):
            release(lock)
            result.from_other_sweeps += 1
            n = result.reused
            offer(reuse(now))
            shrink_bar(result.reused - n)
            return True
        inflight[ex.submit(run)] = (run, lock)
        return True

    def finish(run: ResolvedRun, outcome) -> dict[str, Any]:
        record = outcome.record
        if record is None:
            if outcome.crash is not None:
                record = failed_record(run, outcome.describe(), crash=outcome.crash)
            else:
                record = failed_record(run, outcome.error or "no record came back")
        prior = before.get(run.run_id)
        record["attempts"] = (_attempts(prior) if prior and prior.get("status") == "failed" else 0) + 1
        return record

    interrupted = True
    try:
        while len(queue) or inflight or waiting:
            for run_id, run in list(waiting.items()):
                if len(inflight) >= ex.capacity():
                    break
                if start(run):
                    del waiting[run_id]
            while len(queue) and len(inflight) < ex.capacity():
                run = queue.pop()
                if not start(run):
                    if not waiting and not result.waited:
                        bar.write(
                            "another sweep on this store is training some of these runs: this one trains "
                            "the others and reuses their records",
                            file=sys.stderr,
                        )
                    waiting[run.run_id] = run
                    result.waited += 1
            if not inflight:
                if waiting:
                    time.sleep(LOCK_POLL_S)
                continue
            done, _ = wait(inflight, timeout=LOCK_POLL_S if waiting else None, return_when=FIRST_COMPLETED)
            for fut in done:
                run, lock = inflight.pop(fut)
                try:
                    record = finish(run, fut.result())
                    store.save(record)
                finally:
                    release(lock)
                n = result.reused
                offer(tracker.record_done(record))
                shrink_bar(result.reused - n)
                bar.set_postfix_str(
                    f"last: {record['candidate']} / {record['task']} / seed {record['seed']}", False
                )
                bar.update(1)
                result.records.append(record)
                result.ran += 1
                if record["status"] == "failed":
                    result.failed.append(record)
                    tries = f" (attempt {record['attempts']} of {retries + 1})" if retries else ""
                    bar.write(
                        f"FAILED {record['candidate']} on {record['task']} (seed {record['seed']}, lr "
                        f"{record['lr']:g}): {record['error']}{tries}",
                        file=sys.stderr,
                    )
                elif record["status"] == "diverged":
                    bar.write(
                        f"diverged: {record['candidate']} on {record['task']} (lr {record['lr']:g})",
                        file=sys.stderr,
                    )
        interrupted = False
    finally:  # the bar is done before anyone reports an interruption: nothing is drawn after it
        ex.close(cancel=interrupted)
        for _, lock in inflight.values():
            release(lock)
        bar.close()
    return result
