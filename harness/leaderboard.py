"""Leaderboards: stored records -> verdicts (``harness.scoring``) -> a table people can check.

Per (candidate, task) the cell shows the test score at the learning rate chosen on valid, mean ±
95 % t-interval over seeds. For tasks with a length axis the *extrapolation* column (accuracy at the
longer test lengths, positions beyond the training length only) is the one that ranks; the
in-distribution column is shown beside it. Reference rows (chance, and the best trivial predictor,
``harness.reference``) sit under the candidates, and a column that cannot tell a solver from a
guesser is flagged under the table. A second table gives each cell's chosen rate and how many
seeds solved the task, in how many steps (median). Ranks: ``harness.scoring``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.options import BOARD_FORMATS
from harness.reference import TaskReference, reference_for
from harness.results import dumps_strict
from harness.scoring import Cell, cells, clearly_better, column_flags, task_ranks

FORMATS = BOARD_FORMATS


def select_records(
    records: Iterable[dict[str, Any]],
    tier: str | None = None,
    candidates: list[str] | None = None,
    tasks: list[str] | None = None,
) -> list[dict[str, Any]]:
    out = []
    for r in records:
        if r.get("kind") != "train":
            continue
        if tier and r.get("tier") != tier:
            continue
        if candidates is not None and r.get("candidate") not in candidates:
            continue
        if tasks is not None and r.get("task") not in tasks:
            continue
        out.append(r)
    return out


@dataclass
class Column:
    """One displayed score column: a task's ranking score, or its in-distribution accuracy."""

    task: str
    label: str
    ranks: bool  # this column ranks the task
    reference: float | None
    reference_name: str | None
    chance: float | None
    flags: list[str] = field(default_factory=list)


@dataclass
class Board:
    candidates: list[str]
    tasks: list[str]
    cells: dict[tuple[str, str], Cell]
    ranks: dict[str, dict[str, int]]  # task -> candidate -> rank
    overall: dict[str, float | None]  # None: incomplete
    columns: list[Column]
    references: dict[str, TaskReference | None]
    info: dict[str, dict[str, Any]]  # candidate -> params, state_bytes, state_T
    extra: pd.DataFrame | None = None
    n_seeds: int = 0
    nonconforming: dict[str, list[str]] = field(default_factory=dict)  # candidate -> failed checks

    def cell(self, cand: str, task: str) -> Cell | None:
        return self.cells.get((cand, task))

    def n_cells(self, cand: str) -> int:
        return sum((cand, t) in self.cells for t in self.tasks)

    @property
    def ordered(self) -> list[str]:
        def key(c: str) -> tuple:
            r = self.overall.get(c)
            return (c in self.nonconforming, r is None, r if r is not None else -self.n_cells(c), c)

        return sorted(self.candidates, key=key)


def _info(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mixer params and measured state (bytes per sequence per layer) at the longest task length."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        if "state" not in r:
            continue
        cur = rows.get(r["candidate"])
        if cur is None or r["state"]["seq_len"] > cur["state_T"]:
            rows[r["candidate"]] = {
                "params": r.get("params_mixer"),
                "state_bytes": r["state"]["state_bytes"],
                "state_T": r["state"]["seq_len"],
                # a KV cache starts empty and grows with T; a recurrent state has its size from the start
                "state_grows": r["state"].get("state_bytes_initial", r["state"]["state_bytes"])
                != r["state"]["state_bytes"],
            }
    return rows


def _reference(task: str, records: list[dict[str, Any]]) -> TaskReference | None:
    """The reference rows of the task as these records configured it (None for an unknown task)."""
    sample = next((r for r in records if r.get("task") == task), None)
    config = ((sample or {}).get("identity") or {}).get("task_config")
    if config is None:
        return None
    try:
        return reference_for(task, config)
    except (KeyError, ValueError, TypeError):
        return None


def build_board(
    records: list[dict[str, Any]],
    candidates: list[str] | None = None,
    tasks: list[str] | None = None,
    extra: pd.DataFrame | None = None,
    nonconforming: dict[str, list[str]] | None = None,
) -> Board:
    """Verdicts, ranks, reference rows and column flags of a set of training records.

    ``nonconforming`` (candidate -> failed conformance checks) are shown, never scored or ranked:
    their records, if any, are left out."""
    nonconforming = dict(nonconforming or {})
    all_cells = cells(r for r in records if r.get("candidate") not in nonconforming)
    tasks = tasks or sorted({t for _, t in all_cells})
    candidates = candidates or sorted({c for c, _ in all_cells} | set(nonconforming))
    all_cells = {k: v for k, v in all_cells.items() if k[0] in candidates and k[1] in tasks}
    ranks: dict[str, dict[str, int]] = {}
    columns: list[Column] = []
    references: dict[str, TaskReference | None] = {}
    for task in tasks:
        task_cells = {c: all_cells[(c, task)] for c in candidates if (c, task) in all_cells}
        ranks[task] = task_ranks(task_cells)
        ref = _reference(task, [r for r in records if r.get("task") == task])
        references[task] = ref
        has_lengths = any(cell.has_lengths for cell in task_cells.values())
        finished = [cell for cell in task_cells.values() if cell.finished]
        best = ref.best if ref else None
        col = Column(
            task,
            f"{task} extrap" if has_lengths else task,
            True,
            best.score if best else None,
            best.name if best else None,
            ref.chance if ref else None,
        )
        col.flags = column_flags([c.mean for c in finished], [c.low for c in finished], col.reference)
        if has_lengths:
            best_in = ref.best_in_dist if ref else None
            in_col = Column(
                task,
                f"{task} in-dist",
                False,
                best_in.in_dist if best_in else None,
                best_in.name if best_in else None,
                ref.chance if ref else None,
            )
            lows = [
                c.in_dist_mean - (c.in_dist_ci if not math.isnan(c.in_dist_ci) else 0.0) for c in finished
            ]
            in_col.flags = column_flags([c.in_dist_mean for c in finished], lows, in_col.reference)
            columns.append(in_col)
        columns.append(col)
    overall: dict[str, float | None] = {}
    for cand in candidates:
        if cand in nonconforming:
            overall[cand] = None
            continue
        per_task = [ranks[t][cand] for t in tasks if cand in ranks[t]]
        overall[cand] = sum(per_task) / len(per_task) if len(per_task) == len(tasks) and tasks else None
    n_seeds = max((len(c.seeds) for c in all_cells.values()), default=0)
    return Board(
        candidates,
        tasks,
        all_cells,
        ranks,
        overall,
        columns,
        references,
        _info(records),
        extra,
        n_seeds,
        nonconforming,
    )


# -- values for display ----------------------------------------------------------------------------
def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _fmt_acc(v: float | None, ci: float | None = None) -> str:
    if v is None or _isnan(v):
        return "-"
    s = f"{v:.3f}"
    if ci is not None and not _isnan(ci):
        s += f" ± {ci:.3f}"
    return s


def _fmt_bytes(v: Any) -> str:
    if v is None or _isnan(v):
        return "-"
    v = float(v)
    return f"{v / 1024:.1f} KiB" if v >= 1024 else f"{int(v)} B"


def _fmt_num(v: Any) -> str:
    if v is None or _isnan(v):
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{int(v):,}"


def _cell_text(cell: Cell | None, col: Column) -> str:
    if cell is None:
        return "-"
    if cell.status != "ok":
        return cell.status.upper()
    if col.ranks:
        return _fmt_acc(cell.mean, cell.ci)
    return _fmt_acc(cell.in_dist_mean, cell.in_dist_ci)


def _detail_text(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    solved = cell.n_solved
    steps = cell.median_steps_to_solve
    s = f"lr {cell.lr:g}; solved {solved}/{len(cell.seeds)}"
    if steps is not None:
        s += f" @{steps:.0f}"
    bad = {k: v for k, v in cell.status_counts.items() if k != "ok"}
    if bad:
        s += "; " + ", ".join(f"{v} {k}" for k, v in sorted(bad.items()))
    return s


def _rank_text(board: Board, cand: str) -> str:
    if cand in board.nonconforming:
        return f"not ranked: fails {', '.join(board.nonconforming[cand])}"
    r = board.overall.get(cand)
    if r is None:
        return f"incomplete: {board.n_cells(cand)} of {len(board.tasks)} cells"
    return f"{r:.2f}"


def main_frame(board: Board) -> pd.DataFrame:
    """The main table as text: candidates, then the reference rows."""
    rows = []
    state_t = [i["state_T"] for i in board.info.values() if i.get("state_T")]
    state_label = f"state @T={max(state_t)}" if state_t else "state"
    for cand in board.ordered:
        info = board.info.get(cand, {})
        row = {
            "candidate": cand,
            "params": _fmt_num(info.get("params")),
            state_label: _fmt_bytes(info.get("state_bytes")),
        }
        for col in board.columns:
            row[col.label] = (
                "NONCONFORMING"
                if cand in board.nonconforming
                else _cell_text(board.cell(cand, col.task), col)
            )
        if board.extra is not None and cand in board.extra.index:
            for k, v in board.extra.loc[cand].items():
                row[k] = _fmt_num(v)
        row["rank"] = _rank_text(board, cand)
        rows.append(row)
    for label, getter in (
        ("(chance)", lambda col: col.chance),
        ("(best trivial predictor)", lambda col: col.reference),
    ):
        row = {"candidate": label, "params": "", state_label: ""}
        for col in board.columns:
            v = getter(col)
            row[col.label] = "-" if v is None else f"{v:.3f}"
        row["rank"] = ""
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def detail_frame(board: Board) -> pd.DataFrame:
    rows = []
    for cand in board.ordered:
        row = {"candidate": cand}
        for task in board.tasks:
            cell = board.cell(cand, task)
            rank = board.ranks[task].get(cand)
            row[task] = _detail_text(cell) + (f"; rank {rank}" if rank is not None else "")
        rows.append(row)
    return pd.DataFrame(rows)


def modifier_pairs(board: Board) -> pd.DataFrame:
    """For each ``X+mod`` row with ``X`` present: per ranking column, X+mod minus X."""
    rows = []
    for name in board.candidates:
        if "+" not in name:
            continue
        base = name.rpartition("+")[0]
        if base not in board.candidates:
            continue
        row: dict[str, Any] = {"pair": f"{name} vs {base}"}
        for task in board.tasks:
            a, b = board.cell(base, task), board.cell(name, task)
            if a is not None and b is not None:
                row[task] = f"{a.mean:.3f} -> {b.mean:.3f} ({b.mean - a.mean:+.3f})"
        rows.append(row)
    return pd.DataFrame(rows)


def notes(board: Board) -> list[str]:
    out = []
    for col in board.columns:
        for reason in col.flags:
            out.append(f"FLAG {col.label}: {reason}")
    ref_names = {col.label: col.reference_name for col in board.columns if col.reference_name}
    if ref_names:
        out.append(
            "best trivial predictor per column: "
            + "; ".join(f"{label}: {name}" for label, name in ref_names.items())
        )
    if board.n_seeds <= 1:
        out.append(
            "one seed per cell: no intervals, so ranks carry no interval and are not a verdict "
            "(the default runs 3 seeds)"
        )
    else:
        out.append(
            f"{board.n_seeds} seeds per cell, mean ± 95% t-interval; a task's rank is 1 + the number of "
            "candidates whose interval lies wholly above and whose mean is at least 0.01 higher (overlapping "
            "intervals, or closer means, tie); failed or diverged cells rank last; rank = mean task rank, "
            "only for candidates with every cell"
        )
    out.append(
        "extrap: accuracy at the longer test lengths, positions beyond the training length only; it is "
        "the ranking score of tasks with a length axis"
    )
    return out


def render(board: Board, fmt: str = "table", title: str | None = None) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "json":
        return dumps_strict(json_rows(board), indent=2)
    if fmt == "csv":
        return csv_frame(board).to_csv(index=False)
    shown, details = main_frame(board), detail_frame(board)
    if fmt == "html":
        return _html(board, shown, details, title)
    tablefmt = "github" if fmt == "markdown" else "simple_outline"

    def table(frame: pd.DataFrame) -> str:
        values = frame.values.tolist()
        if fmt == "markdown":
            values = [[_md_escape(str(v)) for v in row] for row in values]
        headers = [_md_escape(str(h)) if fmt == "markdown" else str(h) for h in frame.columns]
        return tabulate(values, headers=headers, tablefmt=tablefmt, disable_numparse=True)

    parts = [table(shown)]
    parts.append("\n".join(f"- {n}" if fmt == "markdown" else f"* {n}" for n in notes(board)))
    parts.append("Chosen learning rate; seeds that solved the task @ median steps to solve; task rank:")
    parts.append(table(details))
    pairs = modifier_pairs(board)
    if len(pairs):
        parts.append("Modifier pairs (ranking score: base -> modified (modified - base)):")
        parts.append(table(pairs.fillna("-")))
    text = "\n\n".join(parts)
    return f"{title}\n\n{text}" if title else text


def _md_escape(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")


def _html(board: Board, shown: pd.DataFrame, details: pd.DataFrame, title: str | None) -> str:
    """A standalone page (no script, no remote file): the tables, the notes, and where the report
    with figures and provenance comes from. Every value is escaped."""
    heading = html.escape(title or "mixer-harness leaderboard")
    body = [f"<h1>{heading}</h1>"]
    body.append(shown.to_html(index=False, border=0, escape=True))
    body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes(board)) + "</ul>")
    body.append(
        "<h2>Chosen learning rate; seeds that solved the task @ median steps to solve; task rank</h2>"
    )
    body.append(details.to_html(index=False, border=0, escape=True))
    body.append(
        "<p>Figures (quality vs speed, extrapolation, recall vs state size, scaling, numerics) and "
        "provenance: <code>harness report</code>.</p>"
    )
    style = (
        "body{font:14px/1.4 system-ui,sans-serif;margin:24px}table{border-collapse:collapse;font-size:13px}"
        "th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f4f4f4}"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{heading}</title><style>{style}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>"
    )


def csv_frame(board: Board) -> pd.DataFrame:
    rows = []
    for cand in board.ordered:
        for task in board.tasks:
            cell = board.cell(cand, task)
            if cell is None:
                continue
            rows.append(
                {
                    "candidate": cand,
                    "task": task,
                    "status": cell.status,
                    "score": cell.mean,
                    "ci95": None if _isnan(cell.ci) else cell.ci,
                    "in_dist": cell.in_dist_mean,
                    "lr": cell.lr,
                    "n_seeds": len(cell.seeds),
                    "n_solved": cell.n_solved,
                    "median_steps_to_solve": cell.median_steps_to_solve,
                    "task_rank": board.ranks[task].get(cand),
                    "rank": board.overall.get(cand),
                }
            )
    return pd.DataFrame(rows)


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


#: the JSON Schema of ``json_rows`` (``--format json``), shipped with the package
SCHEMA_PATH = Path(__file__).with_name("schemas") / "leaderboard.schema.json"


def tie_groups(ranks: dict[str, float | None]) -> dict[str, int | None]:
    """Candidates with equal rank share a tie group; groups are numbered 1, 2, ... from the best
    (a dense rank). Unranked candidates (``None``) have none."""
    values = sorted({round(r, 9) for r in ranks.values() if r is not None})
    index = {v: i + 1 for i, v in enumerate(values)}
    return {c: (index[round(r, 9)] if r is not None else None) for c, r in ranks.items()}


def tied_with(board: Board, task: str, cand: str) -> list[str]:
    """The finished candidates of ``task`` neither clearly better nor clearly worse than ``cand``
    (``harness.scoring.clearly_better``: overlapping intervals, or means within the resolution)."""
    cell = board.cell(cand, task)
    if cell is None or not cell.finished:
        return []
    out = []
    for other in board.ordered:
        o = board.cell(other, task)
        if (
            other != cand
            and o is not None
            and o.finished
            and not (clearly_better(o, cell) or clearly_better(cell, o))
        ):
            out.append(other)
    return out


def _interval(mean: float, ci: float) -> tuple[float | None, float | None]:
    return (None, None) if _isnan(ci) else (_num(mean - ci), _num(mean + ci))


def json_rows(board: Board) -> list[dict[str, Any]]:
    """One object per candidate (``candidate`` key), snake_case keys, no NaN: the stable
    machine-readable leaderboard, documented by ``harness/schemas/leaderboard.schema.json``."""
    from harness.variants import split_label

    overall_groups = tie_groups(board.overall)
    task_groups = {t: tie_groups({c: float(r) for c, r in board.ranks[t].items()}) for t in board.tasks}
    out = []
    for cand in board.ordered:
        info = board.info.get(cand, {})
        tasks = {}
        for task in board.tasks:
            cell = board.cell(cand, task)
            if cell is None:
                continue
            ci_low, ci_high = _interval(cell.mean, cell.ci)
            in_low, in_high = _interval(cell.in_dist_mean, cell.in_dist_ci)
            steps = cell.median_steps_to_solve
            tasks[task] = {
                "status": cell.status,
                "mean": _num(cell.mean),
                "ci_low": ci_low,
                "ci_high": ci_high,
                "n_seeds": len(cell.seeds),
                "seeds": list(cell.seeds),
                "scores": [_num(s) for s in cell.scores],
                "in_dist_mean": _num(cell.in_dist_mean),
                "in_dist_ci_low": in_low,
                "in_dist_ci_high": in_high,
                "extrapolation_by_length": {k: _num(v) for k, v in cell.by_length.items()},
                "lr": cell.lr,
                "lrs_tried": cell.lrs,
                "selection_seeds": list(cell.selection_seeds),
                "steps_to_solve": cell.steps_to_solve,
                "n_solved": cell.n_solved,
                "median_steps_to_solve": steps,
                "status_counts": dict(sorted(cell.status_counts.items())),
                "rank": board.ranks[task].get(cand),
                "tie_group": task_groups[task].get(cand),
                "tied_with": tied_with(board, task, cand),
            }
        bench = None
        if board.extra is not None and cand in board.extra.index:
            bench = {str(k): _num(float(v)) for k, v in board.extra.loc[cand].items()}
        overall = board.overall.get(cand)
        out.append(
            {
                "candidate": cand,
                "base": split_label(cand)[0],
                "overrides": split_label(cand)[1],
                "params": info.get("params"),
                "state_bytes": info.get("state_bytes"),
                "state_seq_len": info.get("state_T"),
                "state_grows": info.get("state_grows"),
                "rank": _num(overall) if overall is not None else None,
                "tie_group": overall_groups.get(cand),
                "complete": overall is not None,
                "cells": board.n_cells(cand),
                "nonconforming": board.nonconforming.get(cand),
                "bench": bench,
                "tasks": tasks,
            }
        )
    return out
