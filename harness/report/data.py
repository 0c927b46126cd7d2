"""What the report reads: stored records, sorted into groups, boards and benchmark series.

Only stored records are read (no training, no timing). Training records are those a ``harness
leaderboard`` of the same tier would use (the current code's, unless ``all_versions``). Throughput
and numerics records count when they are of the current method and candidate source (as ``harness
compare --bench`` uses them) and of one machine: this machine's device where it has records, else
the device with the most records (the page names it and how many records of other devices it left
out). Per (candidate, shape) the newest record wins.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import leaderboard as lb
from harness.options import DEFAULT_BASELINES as _BASELINES_TEXT
from harness.registry import RegistryError, get_candidate, groups
from harness.results import CorruptRecord, RecordStore
from harness.variants import base_name

DEFAULT_BASELINES = tuple(_BASELINES_TEXT.split(","))
#: the task of the recall-vs-state figure, and the accuracy its marker asks for
RECALL_TASK = "mqar"
RECALL_LEVEL = 0.9
#: the shape whose forward+backward tokens/s is the speed axis (the first one stored wins)
SPEED_SEQ_LENS = (1024, 4096, 256, 8192)
OTHER_GROUP = "other"


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "x"


@dataclass
class Store:
    """Every record of one tier that the report may show."""

    train: list[dict[str, Any]]
    throughput: list[dict[str, Any]]
    numerics: list[dict[str, Any]]
    corrupt: list[CorruptRecord]
    stale: int = 0
    bench_device: str | None = None
    bench_left_out: dict[str, int] = field(default_factory=dict)  # device -> records left out


def _source_hash(name: str, cache: dict[str, str | None]) -> str | None:
    if name not in cache:
        try:
            cache[name] = get_candidate(name).source_hash()
        except (RegistryError, ValueError):
            cache[name] = None
    return cache[name]


def _current_bench(records: list[dict[str, Any]], version: int, all_versions: bool) -> list[dict[str, Any]]:
    hashes: dict[str, str | None] = {}
    out = []
    for rec in records:
        ident = rec.get("identity") or {}
        if (rec.get("result") or {}).get("status") != "ok":
            continue
        if not all_versions:
            if ident.get("method_version") != version:
                continue
            if ident.get("source_hash") != _source_hash(ident.get("candidate", ""), hashes):
                continue
        out.append(rec)
    return out


def _one_device(
    tput: list[dict[str, Any]], nums: list[dict[str, Any]]
) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    counts = Counter((r.get("identity") or {}).get("device_name") for r in tput + nums)
    if not counts:
        return None, tput, nums, {}
    from harness.environment import device_name

    here = device_name("cpu")
    try:
        import torch

        if torch.cuda.is_available():
            here = device_name("cuda")
    except Exception:  # pragma: no cover - a broken CUDA setup: this machine's CPU then
        pass
    chosen = here if here in counts else counts.most_common(1)[0][0]
    keep = lambda rows: [r for r in rows if (r.get("identity") or {}).get("device_name") == chosen]
    left = {str(d): n for d, n in counts.items() if d != chosen}
    return chosen, keep(tput), keep(nums), left


def load(store: RecordStore, tier: str, all_versions: bool = False) -> Store:
    """The tier's training records and the benchmark records of one device."""
    from harness.bench.numerics import METHOD_VERSION as NUM_VERSION
    from harness.bench.throughput import METHOD_VERSION as TPUT_VERSION

    train, bad = store.records("train")
    train = lb.select_records(train, tier=tier)
    stale = 0
    if not all_versions:
        from harness.sweep import current_records

        train, stale = current_records(train)
    tput, bad2 = store.records("throughput")
    nums, bad3 = store.records("numerics")
    tput = _current_bench(tput, TPUT_VERSION, all_versions)
    nums = _current_bench(nums, NUM_VERSION, all_versions)
    device, tput, nums, left = _one_device(tput, nums)
    return Store(train, tput, nums, [*bad, *bad2, *bad3], stale, device, left)


# -- groups ------------------------------------------------------------------------------------------
def home_groups(name: str) -> tuple[str, ...]:
    """The groups a name is registered in (a variant: its base's; a modifier name: the modifier's)."""
    try:
        return tuple(get_candidate(name).groups)
    except (RegistryError, ValueError):
        return ()


def group_of_names(names: Iterable[str], baselines: Sequence[str]) -> dict[str, list[str]]:
    """Group -> the names (of ``names``) shown on its page: its members, their variants and modifier
    names, and the baselines (as ``harness compare`` adds them). A group gets a page when a name that
    is not a baseline is registered in it (a candidate listed in another group too, as ``readout``
    lists its pairs' bases, does not open that group); names in no registered group go to ``other``."""
    registered = groups()
    names = list(dict.fromkeys(names))
    base_of = {n: base_name(n) for n in names}
    is_baseline = {n: base_of[n] in baselines or n in baselines for n in names}
    homes = {n: home_groups(n) for n in names}
    listed = [g for g in registered if any(g in homes[n] for n in names if not is_baseline[n])]
    if not listed:  # only baselines stored: the baselines' own groups
        listed = [g for g in registered if any(g in homes[n] for n in names)]
    out: dict[str, list[str]] = {}
    for g in listed:
        members = registered[g]
        out[g] = [n for n in names if n in members or base_of[n] in members]
    placed = {n for ms in out.values() for n in ms}
    other = [n for n in names if n not in placed and not is_baseline[n]]
    if other:
        out[OTHER_GROUP] = other
    base_names = [n for n in names if is_baseline[n]]
    for g in out:
        out[g] = list(dict.fromkeys([*base_names, *out[g]]))
    return out


# -- benchmark series --------------------------------------------------------------------------------
def _newest(records: list[dict[str, Any]], key) -> list[dict[str, Any]]:
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        k = key(r)
        if k not in best or r.get("created", "") >= best[k].get("created", ""):
            best[k] = r
    return list(best.values())


def throughput_frame(records: list[dict[str, Any]], candidates: Sequence[str]) -> pd.DataFrame:
    """One row per (candidate, pass, impl, dtype, batch, d_model, threads, T): the newest record."""
    wanted = set(candidates)
    rows = [r for r in records if (r.get("identity") or {}).get("candidate") in wanted]
    keys = ("candidate", "pass", "impl", "dtype", "batch", "d_model", "threads", "seq_len")
    rows = _newest(rows, lambda r: tuple(r["identity"].get(k) for k in keys))
    out = []
    for r in rows:
        ident, res = r["identity"], r["result"]
        if not res.get("median_s"):
            continue
        out.append(
            {
                **{k: ident.get(k) for k in keys},
                "median_s": res["median_s"],
                "p20_s": res.get("p20_s"),
                "p80_s": res.get("p80_s"),
                "tokens_per_s": res.get("tokens_per_s"),
            }
        )
    cols = [*keys, "median_s", "p20_s", "p80_s", "tokens_per_s"]
    return pd.DataFrame(out, columns=cols)


def main_series(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the most common (dtype, batch, d_model, threads) setting, float32 first: one
    setting per figure, so no line mixes shapes."""
    if frame.empty:
        return frame
    setting = ["dtype", "batch", "d_model", "threads"]
    counts = frame.groupby(setting, dropna=False).size().reset_index(name="n")
    counts["fp32"] = counts["dtype"] == "float32"
    top = counts.sort_values(["fp32", "n"], ascending=False).iloc[0]
    mask = pd.Series(True, index=frame.index)
    for k in setting:
        mask &= frame[k] == top[k]
    return frame[mask]


def speed(frame: pd.DataFrame) -> tuple[dict[str, float], int | None]:
    """Forward+backward tokens/s of the parallel form per candidate at one T (``SPEED_SEQ_LENS``
    order: the first T any candidate has), and that T."""
    fb = frame[(frame["pass"] == "fwd_bwd") & (frame["impl"] == "parallel")]
    if fb.empty:
        return {}, None
    have = set(fb["seq_len"])
    T = next((t for t in SPEED_SEQ_LENS if t in have), None)
    if T is None:
        T = int(fb["seq_len"].value_counts().idxmax())
    at = fb[fb["seq_len"] == T]
    return {str(r.candidate): float(r.tokens_per_s) for r in at.itertuples() if r.tokens_per_s}, int(T)


def numerics_frame(records: list[dict[str, Any]], candidates: Sequence[str]) -> pd.DataFrame:
    """Output RMS error ratio against float64 of each candidate's ``parallel`` form per dtype, at the
    longest T measured (newest record); ``finite`` False where the output was not finite."""
    wanted = set(candidates)
    rows = [
        r
        for r in records
        if (r.get("identity") or {}).get("candidate") in wanted
        and r["identity"].get("check") == "error"
        and r["identity"].get("impl") == "parallel"
    ]
    rows = _newest(
        rows, lambda r: (r["identity"]["candidate"], r["identity"]["dtype"], r["identity"]["seq_len"])
    )
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        k = (r["identity"]["candidate"], r["identity"]["dtype"])
        if k not in best or r["identity"]["seq_len"] > best[k]["identity"]["seq_len"]:
            best[k] = r
    out = []
    for (cand, dtype), r in best.items():
        err = r["result"].get("out_rms")
        finite = r["result"].get("finite")
        if err is not None and not math.isfinite(err):
            err, finite = None, False
        out.append(
            {
                "candidate": cand,
                "dtype": dtype,
                "seq_len": r["identity"]["seq_len"],
                "out_rms": err,
                "finite": finite,
            }
        )
    return pd.DataFrame(out, columns=["candidate", "dtype", "seq_len", "out_rms", "finite"])


def bench_extra(tput: pd.DataFrame, nums: pd.DataFrame, candidates: Sequence[str]) -> pd.DataFrame | None:
    """The leaderboard's benchmark columns (as ``compare --bench``): tokens/s, time exponent, bf16 error."""
    from harness.bench.measure import fit_exponent

    if tput.empty and nums.empty:
        return None
    series = main_series(tput)
    tok, _ = speed(series) if not series.empty else ({}, None)
    rows = {}
    for cand in candidates:
        fb = series[
            (series["candidate"] == cand) & (series["pass"] == "fwd_bwd") & (series["impl"] == "parallel")
        ]
        exp = fit_exponent(list(fb["seq_len"]), list(fb["median_s"])) if len(fb) else None
        bf = nums[(nums["candidate"] == cand) & (nums["dtype"] == "bfloat16")] if not nums.empty else nums
        err = bf["out_rms"].iloc[0] if len(bf) else None
        rows[cand] = {
            "fwd_bwd_tok_s": tok.get(cand, math.nan),
            "time_exponent": math.nan if exp is None else exp,
            "bf16_err": math.nan if err is None else err,
        }
    df = pd.DataFrame.from_dict(rows, orient="index", columns=["fwd_bwd_tok_s", "time_exponent", "bf16_err"])
    return df.astype(float)


# -- state size ------------------------------------------------------------------------------------
@dataclass
class StatePoint:
    candidate: str
    family: str  # the base name: a sweep's variants share it
    label: str  # what the variant sets, e.g. "d_state=8" ("" for a plain name)
    state_bytes: int
    seq_len: int
    grows: bool  # a KV cache: the state grows with T
    mean: float
    low: float
    high: float
    status: str


def state_points(records: list[dict[str, Any]], board: lb.Board, task: str = RECALL_TASK) -> list[StatePoint]:
    """One point per candidate with a cell on ``task``: its score there against the state measured
    in that task's records (at the task's length)."""
    from harness.variants import split_label, variant_name

    state: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("task") == task and "state" in r and r.get("candidate") in board.candidates:
            state.setdefault(r["candidate"], r["state"])
    out = []
    for cand, st in state.items():
        cell = board.cell(cand, task)
        if cell is None:
            continue
        family, overrides = split_label(cand)
        label = variant_name("", overrides)[1:-1] if overrides else ""
        grows = st.get("state_bytes_initial", st["state_bytes"]) != st["state_bytes"]
        out.append(
            StatePoint(
                cand,
                family,
                label,
                int(st["state_bytes"]),
                int(st["seq_len"]),
                grows,
                cell.mean,
                cell.low,
                cell.high,
                cell.status,
            )
        )
    return sorted(out, key=lambda p: (p.family, p.state_bytes, p.candidate))


def smallest_reaching(points: list[StatePoint], level: float = RECALL_LEVEL) -> dict[str, StatePoint | None]:
    """Per family: the point with the smallest state whose mean score reaches ``level`` (None: none does)."""
    out: dict[str, StatePoint | None] = {}
    for p in points:
        out.setdefault(p.family, None)
        if p.status == "ok" and p.mean >= level:
            cur = out[p.family]
            if cur is None or p.state_bytes < cur.state_bytes:
                out[p.family] = p
    return out


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names on the frontier of (speed, quality), both higher-better: no other point is at least as
    good on both and better on one. Sorted by speed."""
    front = []
    for name, (x, y) in points.items():
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for o, (ox, oy) in points.items() if o != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def mean_score(board: lb.Board, cand: str) -> float | None:
    """The mean over the board's tasks of a candidate's ranking score (None without every cell)."""
    cells = [board.cell(cand, t) for t in board.tasks]
    if not cells or any(c is None for c in cells):
        return None
    return sum(c.mean for c in cells) / len(cells)


def training_length(records: list[dict[str, Any]], task: str) -> int | None:
    """The task's training length (the length its state is measured at)."""
    for r in records:
        if r.get("task") == task and "state" in r:
            return int(r["state"]["seq_len"])
    return None


def relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start)).as_posix()
