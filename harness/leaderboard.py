"""Leaderboards: pandas over stored records, rendered with tabulate or exported.

Per (candidate, task): the learning rate is chosen by mean *valid* token accuracy over seeds, and the
*test* accuracy at that rate is reported as mean ± a 95% t-interval over seeds (no interval with one
seed). ``extrap`` is the mean test token accuracy over the task's longer test lengths, counting
only positions beyond the training length. ``rank`` is
the mean over tasks of the candidate's rank by test accuracy (1 = best, ties share the best rank).
Runs that diverged count as accuracy 0 at their learning rate; failed runs are listed, not scored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
from scipy import stats
from tabulate import tabulate

FORMATS = ("table", "markdown", "csv", "json", "html")


def _ci95(values: list[float]) -> float:
    if len(values) < 2:
        return float("nan")
    sem = stats.sem(values)
    return float(sem * stats.t.ppf(0.975, len(values) - 1))


def _test_acc(r: dict[str, Any]) -> float:
    return r["test"]["token_acc"] if r.get("status") == "ok" else 0.0


def _valid_acc(r: dict[str, Any]) -> float:
    return r["valid"]["token_acc"] if r.get("status") == "ok" else 0.0


def _extrap(r: dict[str, Any], has_lengths: bool) -> float | None:
    """Mean beyond-training-length accuracy; a diverged run scores 0 where the task has lengths."""
    if r.get("status") != "ok":
        return 0.0 if has_lengths else None
    lengths = r.get("test_lengths") or {}
    if not lengths:
        return None
    return sum(v.get("beyond_token_acc", v["token_acc"]) for v in lengths.values()) / len(lengths)


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


def aggregate(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (candidate, task) at the learning rate chosen on valid."""
    scored = [r for r in records if r.get("status") in ("ok", "diverged")]
    if not scored:
        return pd.DataFrame(
            columns=["candidate", "task", "lr", "seeds", "test", "test_ci", "extrap", "seq", "diverged"]
        )
    tasks_with_lengths = {r["task"] for r in scored if r.get("status") == "ok" and r.get("test_lengths")}
    rows = []
    for r in scored:
        rows.append(
            {
                "candidate": r["candidate"],
                "task": r["task"],
                "lr": r["lr"],
                "seed": r["seed"],
                "valid": _valid_acc(r),
                "test": _test_acc(r),
                "seq": r["test"]["seq_acc"] if r.get("status") == "ok" else 0.0,
                "extrap": _extrap(r, r["task"] in tasks_with_lengths),
                "diverged": r.get("status") == "diverged",
            }
        )
    df = pd.DataFrame(rows)
    out = []
    for (cand, task), g in df.groupby(["candidate", "task"], sort=False):
        by_lr = g.groupby("lr")["valid"].mean()
        best_lr = by_lr.idxmax()
        sel = g[g["lr"] == best_lr]
        tests = sel["test"].tolist()
        extr = [x for x in sel["extrap"].tolist() if x is not None and not _isnan(x)]
        out.append(
            {
                "candidate": cand,
                "task": task,
                "lr": best_lr,
                "seeds": len(sel),
                "test": sum(tests) / len(tests),
                "test_ci": _ci95(tests),
                "extrap": sum(extr) / len(extr) if extr else None,
                "seq": sel["seq"].mean(),
                "diverged": int(sel["diverged"].sum()),
            }
        )
    return pd.DataFrame(out)


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _state_and_params(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Mixer params and measured state (bytes per sequence per layer) at the longest task length."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        if "state" not in r:
            continue
        cur = rows.get(r["candidate"])
        if cur is None or r["state"]["seq_len"] > cur["state_T"]:
            rows[r["candidate"]] = {
                "candidate": r["candidate"],
                "params": r.get("params_mixer"),
                "state_bytes": r["state"]["state_bytes"],
                "state_T": r["state"]["seq_len"],
            }
    return pd.DataFrame(list(rows.values()), columns=["candidate", "params", "state_bytes", "state_T"])


def build_leaderboard(
    records: list[dict[str, Any]],
    candidates: list[str] | None = None,
    tasks: list[str] | None = None,
    extra: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The wide board: one row per candidate, rank-sorted. ``extra`` (indexed by candidate) is merged."""
    agg = aggregate(records)
    task_order = tasks or sorted(agg["task"].unique()) if len(agg) else (tasks or [])
    cand_order = candidates or sorted({r["candidate"] for r in records})
    board = pd.DataFrame({"candidate": cand_order})
    sp = _state_and_params(records)
    board = board.merge(sp, on="candidate", how="left")
    rank_cols = []
    for task in task_order:
        sub = agg[agg["task"] == task].set_index("candidate")
        board[f"{task}"] = board["candidate"].map(sub["test"]) if len(sub) else float("nan")
        board[f"{task} ci"] = board["candidate"].map(sub["test_ci"]) if len(sub) else float("nan")
        if len(sub) and sub["extrap"].notna().any():
            board[f"{task} extrap"] = board["candidate"].map(sub["extrap"])
        rank_col = f"_rank_{task}"
        board[rank_col] = board[task].rank(ascending=False, method="min")
        rank_cols.append(rank_col)
    board["rank"] = board[rank_cols].mean(axis=1) if rank_cols else float("nan")
    board = board.drop(columns=rank_cols)
    if extra is not None and len(extra):
        board = board.merge(extra, left_on="candidate", right_index=True, how="left")
    return board.sort_values(["rank", "candidate"], na_position="last").reset_index(drop=True)


def modifier_pairs(board: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """For each ``X+mod`` row with ``X`` present: per task, accuracy of X+mod minus X."""
    by_name = board.set_index("candidate")
    rows = []
    for name in board["candidate"]:
        if "+" not in name:
            continue
        base = name.rpartition("+")[0]
        if base not in by_name.index:
            continue
        row: dict[str, Any] = {"pair": f"{name} vs {base}"}
        for t in tasks:
            if t in by_name.columns:
                row[f"{t} base"] = by_name.at[base, t]
                row[f"{t} modified"] = by_name.at[name, t]
                row[f"{t} diff"] = by_name.at[name, t] - by_name.at[base, t]
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_acc(v: Any, ci: Any = None) -> str:
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


def display_frame(board: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Human-formatted columns: accuracies with CI, sizes in KiB, ranks to 2 decimals."""
    out = pd.DataFrame({"candidate": board["candidate"]})
    out["params"] = board["params"].map(_fmt_num)
    state_t = board["state_T"].dropna()
    label = f"state @T={int(state_t.max())}" if len(state_t) else "state"
    out[label] = board["state_bytes"].map(_fmt_bytes)
    for t in tasks:
        if t not in board.columns:
            continue
        out[t] = [_fmt_acc(v, c) for v, c in zip(board[t], board[f"{t} ci"])]
        if f"{t} extrap" in board.columns:
            out[f"{t} extrap"] = board[f"{t} extrap"].map(_fmt_acc)
    known = {"candidate", "params", "state_bytes", "state_T", "rank"}
    for col in board.columns:
        if col in known or any(col == t or col.startswith(f"{t} ") for t in tasks):
            continue
        out[col] = board[col].map(_fmt_num)
    out["rank"] = board["rank"].map(lambda v: "-" if _isnan(v) else f"{v:.2f}")
    return out


def render(board: pd.DataFrame, tasks: list[str], fmt: str = "table", title: str | None = None) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(_json_rows(board), indent=2, default=_json_default)
    if fmt == "csv":
        return board.to_csv(index=False)
    shown = display_frame(board, tasks)
    if fmt == "html":
        return shown.to_html(index=False, border=0)
    tablefmt = "github" if fmt == "markdown" else "simple_outline"
    text = tabulate(
        shown.values.tolist(), headers=list(shown.columns), tablefmt=tablefmt, disable_numparse=True
    )
    pairs = modifier_pairs(board, tasks)
    if len(pairs):
        shown_pairs = pd.DataFrame({"pair": pairs["pair"]})
        for t in tasks:
            if f"{t} diff" in pairs.columns:
                shown_pairs[t] = [
                    "-" if _isnan(d) else f"{b:.3f} -> {m:.3f} ({d:+.3f})"
                    for b, m, d in zip(pairs[f"{t} base"], pairs[f"{t} modified"], pairs[f"{t} diff"])
                ]
        text += "\n\nModifier pairs (test token accuracy: base -> modified (modified - base)):\n"
        text += tabulate(
            shown_pairs.values.tolist(),
            headers=list(shown_pairs.columns),
            tablefmt=tablefmt,
            disable_numparse=True,
        )
    if title:
        text = f"{title}\n{text}"
    return text


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _json_rows(board: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for rec in board.to_dict(orient="records"):
        rows.append({k: (None if _isnan(v) else v) for k, v in rec.items()})
    return rows
