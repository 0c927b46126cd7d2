"""How a leaderboard cell becomes a verdict: the rate chosen on valid, the seeds' mean and
interval on test, ranks with ties. One owner for every such rule (DESIGN §4).

- **Rate.** For each (candidate, task), the learning rate with the best mean *valid* selection
  score (``harness.training.selection_score``) over the *selection seeds* — the seeds run at every
  rate of the grid: all seeds under a full grid, seed 0 under the first-seed scheme. Ties (e.g.
  solved at several rates) go to the rate that solved more runs, then in fewer steps, then the
  smaller rate. The test set never enters the choice.
- **Score.** The test selection score at that rate, mean over every seed run there, with a 95 %
  t-interval (none with one seed). A run that diverged or failed scores 0: it did not solve the task.
- **Ranks.** Within a task, a candidate's rank is 1 + the number of candidates *clearly* better:
  whose interval lies wholly above its own (non-overlapping 95 % intervals; with one seed the
  intervals are points) *and* whose mean is higher by at least ``RESOLUTION`` (0.01 accuracy: about
  three standard errors of a 1024-example test score near 0.99, so 0.999 and 0.994 are both
  "solved", not an order). So differences inside the intervals, or below the resolution, are
  ties. A cell whose runs all diverged or failed ranks after every finished one. The overall rank
  is the mean of a candidate's task ranks, given only when it has every cell.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

FINISHED = ("ok", "diverged")
#: differences of mean score below this are ties whatever the intervals say
RESOLUTION = 0.01
#: a column is flagged when no candidate's interval clears the best trivial predictor by this much
CLEAR_MARGIN = 0.05
#: ... or when nobody solves it (mean below this) ...
SOLVED_LEVEL = 0.9
#: ... or when nobody stays near the reference row (every mean above reference + this)
NEAR_REFERENCE = 0.10


def ci95(values: list[float]) -> float:
    """Half-width of the 95 % t-interval of the mean (NaN for fewer than 2 values)."""
    if len(values) < 2:
        return float("nan")
    sd = statistics.stdev(values)
    return float(sd / math.sqrt(len(values)) * stats.t.ppf(0.975, len(values) - 1))


def _score(r: dict[str, Any], key: str) -> float:
    return float(r.get(key, 0.0)) if r.get("status") == "ok" else 0.0


def test_score(r: dict[str, Any]) -> float:
    """The test twin of the valid selection score: extrapolation where the task has lengths."""
    if r.get("status") != "ok":
        return 0.0
    lengths = r.get("test_lengths") or {}
    if lengths:
        return sum(v["beyond_token_acc"] for v in lengths.values()) / len(lengths)
    return float(r["test"]["token_acc"])


def in_dist_test(r: dict[str, Any]) -> float:
    return float(r["test"]["token_acc"]) if r.get("status") == "ok" else 0.0


@dataclass
class Cell:
    """The verdict of one (candidate, task)."""

    candidate: str
    task: str
    status: str  # ok | diverged | failed
    lr: float
    lrs: list[float]
    selection_seeds: list[int]
    seeds: list[int]
    scores: list[float]  # test selection score per seed at the chosen rate
    in_dist: list[float]  # in-distribution test token accuracy per seed
    steps_to_solve: list[int | None]
    by_length: dict[str, float] = field(default_factory=dict)  # mean beyond-length accuracy per length
    status_counts: dict[str, int] = field(default_factory=dict)  # over every run of the cell
    has_lengths: bool = False

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def ci(self) -> float:
        return ci95(self.scores)

    @property
    def low(self) -> float:
        return self.mean - self.ci if not math.isnan(self.ci) else self.mean

    @property
    def high(self) -> float:
        return self.mean + self.ci if not math.isnan(self.ci) else self.mean

    @property
    def in_dist_mean(self) -> float:
        return sum(self.in_dist) / len(self.in_dist)

    @property
    def in_dist_ci(self) -> float:
        return ci95(self.in_dist)

    @property
    def n_solved(self) -> int:
        return sum(s is not None for s in self.steps_to_solve)

    @property
    def median_steps_to_solve(self) -> float | None:
        solved = sorted(s for s in self.steps_to_solve if s is not None)
        if not solved:
            return None
        mid = len(solved) // 2
        return float(solved[mid]) if len(solved) % 2 else (solved[mid - 1] + solved[mid]) / 2

    @property
    def finished(self) -> bool:
        return self.status == "ok"


def choose_rate(runs: list[dict[str, Any]]) -> tuple[float, list[int]]:
    """The learning rate chosen on valid for one cell's runs, and the selection seeds."""
    lrs = sorted({float(r["lr"]) for r in runs})
    seeds_at = {lr: {r["seed"] for r in runs if float(r["lr"]) == lr} for lr in lrs}
    selection = sorted(set.intersection(*seeds_at.values())) if lrs else []
    if len(lrs) == 1 or not selection:
        # one rate, or no seed at every rate yet: the rate with the most seeds, then by score
        selection = selection or sorted({r["seed"] for r in runs})

    def key(lr: float) -> tuple:
        sel = [r for r in runs if float(r["lr"]) == lr and r["seed"] in selection]
        if not sel:
            return (-math.inf, 0, 0.0, 0.0)
        mean_valid = sum(_score(r, "valid_score") for r in sel) / len(sel)
        solved = sum(r.get("steps_to_solve") is not None for r in sel)
        steps = sum(r.get("steps_done", 0) or 0 for r in sel) / len(sel)
        return (round(mean_valid, 9), solved, -steps, -lr)

    return max(lrs, key=key), selection


def cell_verdict(runs: list[dict[str, Any]]) -> Cell:
    """The verdict of one (candidate, task) from all its runs (every rate and seed)."""
    lr, selection = choose_rate(runs)
    at = sorted((r for r in runs if float(r["lr"]) == lr), key=lambda r: r["seed"])
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.get("status", "failed")] = counts.get(r.get("status", "failed"), 0) + 1
    statuses = {r.get("status") for r in at}
    status = "ok" if "ok" in statuses else ("diverged" if "diverged" in statuses else "failed")
    by_length: dict[str, list[float]] = {}
    for r in at:
        for L, v in (r.get("test_lengths") or {}).items() if r.get("status") == "ok" else ():
            by_length.setdefault(L, []).append(v["beyond_token_acc"])
    return Cell(
        candidate=at[0]["candidate"],
        task=at[0]["task"],
        status=status,
        lr=lr,
        lrs=sorted({float(r["lr"]) for r in runs}),
        selection_seeds=selection,
        seeds=[r["seed"] for r in at],
        scores=[test_score(r) for r in at],
        in_dist=[in_dist_test(r) for r in at],
        steps_to_solve=[r.get("steps_to_solve") if r.get("status") == "ok" else None for r in at],
        by_length={L: sum(v) / len(v) for L, v in sorted(by_length.items(), key=lambda kv: int(kv[0]))},
        status_counts=counts,
        has_lengths=bool((at[0].get("identity", {}).get("task_config") or {}).get("test_lengths")),
    )


def cells(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """Every (candidate, task) cell of a set of training records."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "train" and r.get("status") in ("ok", "diverged", "failed"):
            grouped.setdefault((r["candidate"], r["task"]), []).append(r)
    return {key: cell_verdict(runs) for key, runs in grouped.items()}


def clearly_better(a: Cell, b: Cell) -> bool:
    """``a`` beats ``b`` beyond seed noise: intervals apart and means at least the resolution apart."""
    return a.low > b.high and a.mean - b.mean >= RESOLUTION


def task_ranks(task_cells: dict[str, Cell]) -> dict[str, int]:
    """Rank per candidate within one task: 1 + how many are clearly better (non-overlapping
    intervals and at least ``RESOLUTION`` higher); unfinished cells rank after every finished one."""
    finished = {c: cell for c, cell in task_cells.items() if cell.finished}
    ranks = {}
    for name, cell in task_cells.items():
        if not cell.finished:
            ranks[name] = len(finished) + 1
        else:
            ranks[name] = 1 + sum(clearly_better(other, cell) for o, other in finished.items() if o != name)
    return ranks


def column_flags(means: list[float], lows: list[float], reference: float | None) -> list[str]:
    """Reasons a column does not separate: nobody solves it, nobody clears the reference row by a
    clear margin, nobody stays near the reference row."""
    reasons = []
    if not means:
        return reasons
    if max(means) < SOLVED_LEVEL:
        reasons.append(f"no candidate solves it (best {max(means):.3f} < {SOLVED_LEVEL})")
    if reference is not None:
        if max(lows) <= reference + CLEAR_MARGIN:
            reasons.append(
                f"no candidate clears the best trivial predictor ({reference:.3f}) by {CLEAR_MARGIN}"
            )
        elif min(means) > reference + NEAR_REFERENCE:
            reasons.append(
                f"every candidate beats the best trivial predictor ({reference:.3f}) by > {NEAR_REFERENCE}: "
                "nothing stays near it"
            )
    return reasons
