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

Finished records (status ok or diverged) are reused; a run that failed (raised) is retried on the
next sweep, since a crash says nothing about the candidate's quality. Each record is written the
moment its run ends, so an interrupted sweep resumes where it stopped.

Runs are single-threaded (see ``harness.training.TRAIN_THREADS``), so ``jobs`` worker processes use
``jobs`` cores and a run's result does not depend on how many ran beside it.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any

from harness.progress import progress_bar
from harness.results import RecordStore
from harness.scoring import choose_rate
from harness.train import ResolvedRun, RunSpec, execute, resolve, task_tier
from harness.variants import canonical_name

REUSABLE = ("ok", "diverged")
SCHEMES = ("first-seed", "grid")


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


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask for SIGTERM when the sweep's process dies, so a killed
    sweep leaves no orphan trainers behind (their unfinished runs would be lost anyway). Ctrl-C is
    the driver's to handle (it stops the workers), so a worker prints nothing of its own."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the workers (their runs are lost, not recorded)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()


def _execute_spec(spec: RunSpec) -> dict[str, Any]:
    """Worker entry point: resolve in the worker (plug-ins load there too) and train."""
    return execute(resolve(spec))


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


def _run_all(queue: _Queue, jobs: int, on_record) -> Iterator[dict[str, Any]]:
    """Execute queued runs (``jobs`` at a time); ``on_record`` may queue follow-ups."""
    if jobs <= 1:
        while len(queue):
            record = execute(queue.pop())
            on_record(record)
            yield record
        return
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_die_with_parent) as pool:
        pending: dict[Future, RunSpec] = {}
        try:
            while len(queue) or pending:
                while len(queue) and len(pending) < jobs:
                    spec = queue.pop().spec
                    pending[pool.submit(_execute_spec, spec)] = spec
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: f.exception() is not None):  # results first
                    spec = pending.pop(fut)
                    try:
                        record = fut.result()
                    except BrokenProcessPool:
                        raise WorkerDied([spec, *pending.values()]) from None
                    on_record(record)
                    yield record
        except BaseException:  # interrupted, a worker died, or a record could not be written
            _stop_workers(pool)
            raise


def gate_conformance(
    cells: list[CellPlan], store: RecordStore, result: SweepResult, progress: bool, isolated: bool = False
) -> list[CellPlan]:
    """The cells of candidates that conform (``harness.conformance``, checked once per candidate
    source hash and stored); the others are noted in ``result.nonconforming`` and never trained.
    ``isolated`` checks in a child process, as parallel sweeps train in worker processes."""
    from harness.conformance import conformance_record

    verdicts = {}
    for name in dict.fromkeys(c.base.candidate for c in cells):
        if progress:
            print(f"conformance: {name} ...", end="\r", file=sys.stderr, flush=True)
        verdicts[name] = conformance_record(name, store, isolated=isolated)
        if verdicts[name]["status"] != "conforms":
            result.nonconforming[name] = verdicts[name]
            first = next((r for r in verdicts[name]["results"] if r["status"] == "fail"), {})
            print(
                f"NONCONFORMING {name}: fails {', '.join(verdicts[name]['failed'])}; not trained, not ranked "
                f"({first.get('check')}: {first.get('detail')}; `harness check {name}` lists every check)",
                file=sys.stderr,
            )
    return [c for c in cells if c.base.candidate not in result.nonconforming]


def run_sweep(
    cells: list[CellPlan],
    store: RecordStore,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
    check: bool = True,
) -> SweepResult:
    """Run every cell's missing runs; with ``check`` (the default) only candidates that conform."""
    result = SweepResult()
    if check:
        cells = gate_conformance(cells, store, result, progress, isolated=jobs > 1)
    tracker = _Cells(cells)
    queue = _Queue()
    seen: set[str] = set()
    total = sum(cell.n_runs for cell in cells)

    def offer(runs: list[ResolvedRun]) -> None:
        """Reuse what is stored (following up at once), queue the rest."""
        todo = list(runs)
        while todo:
            run = todo.pop(0)
            if run.run_id in seen:
                continue
            seen.add(run.run_id)
            existing = None if force else store.get("train", run.run_id)
            if existing is not None and existing.get("status") in REUSABLE:
                result.records.append(existing)
                result.reused += 1
                todo.extend(tracker.record_done(existing))
            else:
                queue.push(run)

    offer(tracker.selection)
    if progress and result.reused:
        print(f"{result.reused} of {total} runs reused from {store.runs}", file=sys.stderr)
    bar = progress_bar(
        max(total - result.reused, 0), "runs", enabled=progress and bool(len(queue)), unit="run"
    )

    def on_record(record: dict[str, Any]) -> None:
        store.save(record)
        before = result.reused
        offer(tracker.record_done(record))
        if result.reused > before:  # follow-ups found stored: fewer runs left to train
            bar.total = max(bar.total - (result.reused - before), bar.n)
            bar.refresh()

    try:
        for record in _run_all(queue, jobs, on_record):
            bar.set_postfix_str(
                f"last: {record['candidate']} / {record['task']} / seed {record['seed']}", False
            )
            bar.update(1)
            result.records.append(record)
            result.ran += 1
            if record["status"] == "failed":
                result.failed.append(record)
                bar.write(
                    f"FAILED {record['candidate']} on {record['task']}: {record['error']}", file=sys.stderr
                )
            elif record["status"] == "diverged":
                bar.write(
                    f"diverged: {record['candidate']} on {record['task']} (lr {record['lr']:g})",
                    file=sys.stderr,
                )
    finally:  # the bar is done before anyone reports an interruption: nothing is drawn after it
        bar.close()
    return result
