"""Readable tables for the benchmark commands, and the columns the leaderboard merges.

``*_table(rows)`` turn the rows a run returns into pandas frames with display columns (times in ms,
errors in scientific notation, skipped rows with their reason); ``render`` prints them with tabulate
(``table``, ``markdown``), or as CSV / JSON (JSON gives the full rows, not the display columns).
``bench_columns(store, candidates)`` reads stored records and returns one row per candidate with
``fwd_bwd_tok_s`` (at a reference shape), ``time_exponent`` and ``bf16_err`` for ``harness compare --bench``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.bench.common import parse_dtype
from harness.bench.measure import fit_exponent
from harness.bench.numerics import METHOD_VERSION as NUM_VERSION
from harness.bench.throughput import METHOD_VERSION as TPUT_VERSION
from harness.environment import device_name as current_device_name
from harness.options import BENCH_FORMATS
from harness.registry import RegistryError, get_candidate
from harness.results import RecordStore, dumps_strict

FORMATS = BENCH_FORMATS


def _f(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "" if x is None else "nan"
    return format(x, spec)


def _ms(x: Any) -> str:
    return "" if x is None else f"{x * 1e3:.4g}"


def _note(r: dict[str, Any]) -> str:
    if r.get("status") == "ok":
        return "reused" if r.get("reused") else ""
    return f"{r.get('status')}: {r.get('reason')}"


def throughput_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    cuda = any(r.get("device") == "cuda" for r in rows)
    out = []
    for r in rows:
        d = {
            "candidate": r["candidate"],
            "pass": r["pass"],
            "impl": r["impl"],
            "dtype": r["dtype"],
            "T": r["seq_len"],
            "median ms": _ms(r.get("median_s")),
            "p20-p80 ms": f"{_ms(r.get('p20_s'))}-{_ms(r.get('p80_s'))}" if r.get("median_s") else "",
            "tokens/s": _f(r.get("tokens_per_s"), ".4g"),
            "peak MB": _f(None if r.get("peak_mem_bytes") is None else r["peak_mem_bytes"] / 2**20, ".3g"),
            "exponent": _f(r.get("exponent"), ".2f"),
            "x base": _f(r.get("x_base"), ".3g"),
            "x flops": _f(r.get("x_flops"), ".3g"),
            "x probe": _f(r.get("x_probe"), ".4g"),
        }
        if cuda:
            d["TFLOP/s"] = _f(r.get("tflops"), ".3g")
            d["% peak"] = _f(None if r.get("peak_frac") is None else 100 * r["peak_frac"], ".3g")
        d["note"] = _note(r)
        out.append(d)
    return pd.DataFrame(out)


def numerics_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    out = []
    for r in rows:
        if r.get("check") != "error":
            continue
        stable = r.get("stable_long")
        out.append(
            {
                "candidate": r["candidate"],
                "impl": r["impl"],
                "dtype": r["dtype"],
                "T": r["seq_len"],
                "out rms ratio": _f(r.get("out_rms"), ".2e"),
                "out max abs": _f(r.get("out_max_abs"), ".2e"),
                "state err": _f(r.get("state_err"), ".2e"),
                "grad rms ratio": _f(r.get("grad_rms"), ".2e"),
                "finite": "" if r.get("finite") is None else ("yes" if r["finite"] else "NO"),
                "stable long": "" if stable is None else ("yes" if stable else "NO"),
                "note": _note(r),
            }
        )
    return pd.DataFrame(out)


def stability_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    out = []
    for r in rows:
        if r.get("check") != "stability":
            continue
        out.append(
            {
                "candidate": r["candidate"],
                "dtype": r["dtype"],
                "T": r["seq_len"],
                "out finite": "" if r.get("out_finite") is None else ("yes" if r["out_finite"] else "NO"),
                "out max": _f(r.get("out_max_abs_value"), ".3g"),
                "state rms": _f(r.get("state_final_rms"), ".3g"),
                "state growth T/4->T": _f(r.get("state_growth"), ".3g"),
                "stable": "" if r.get("stable") is None else ("yes" if r["stable"] else "NO"),
                "note": r.get("note") or _note(r),
            }
        )
    return pd.DataFrame(out)


def scans_table(rows: Sequence[dict[str, Any]], family: str | None = None) -> pd.DataFrame:
    """One frame for the rows of ``family`` (all families if None; columns of one family are then
    blank on the others' rows)."""
    out = []
    for r in rows:
        if family is not None and r.get("family") != family:
            continue
        params = r.get("params") or {}
        shape = ", ".join(f"{k}={r[k]}" for k in ("T", "N", "D", "H") if r.get(k) is not None)
        if r.get("regime"):
            shape += f", {r['regime']} delta={r.get('delta')}"
        d = {
            "family": r["family"],
            "algorithm": r["algorithm"] + "".join(f" {k}={v}" for k, v in params.items()),
            "shape": shape,
            "dtype": r["dtype"],
            "median ms": _ms(r.get("median_s")),
            "p20-p80 ms": f"{_ms(r.get('p20_s'))}-{_ms(r.get('p80_s'))}" if r.get("median_s") else "",
            "rel err": _f(r.get("rel_err"), ".2e"),
            "max abs": _f(r.get("max_abs"), ".2e"),
        }
        if r.get("family") == "dense":
            d |= {
                "matmuls": r.get("matmat", ""),
                "x seq": _f(r.get("x_seq"), ".3g"),
                "x prefix": _f(r.get("x_prefix"), ".3g"),
            }
        elif r.get("family") == "resolvent":
            d |= {"rho": _f(r.get("rho"), ".3g"), "x woodbury": _f(r.get("x_woodbury"), ".3g")}
        else:
            d |= {"x seq": _f(r.get("x_seq"), ".3g")}
        d["note"] = _note(r)
        out.append(d)
    return pd.DataFrame(out).fillna("")


def render_scans(rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """Scans rows as one table per family (table / markdown), or all rows (csv / json)."""
    if fmt in ("csv", "json"):
        return render(scans_table(rows), fmt, rows)
    parts = []
    for fam in dict.fromkeys(r.get("family") for r in rows):
        parts.append(f"{fam}\n{render(scans_table(rows, fam), fmt)}")
    return "\n\n".join(parts) if parts else "(no rows)"


def render(df: pd.DataFrame, fmt: str = "table", rows: Sequence[dict[str, Any]] | None = None) -> str:
    """``table`` / ``markdown`` via tabulate, ``csv`` of the display frame, ``json`` of the raw rows."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "json":
        return dumps_strict(
            list(rows) if rows is not None else df.to_dict(orient="records"), indent=1, default=str
        )
    if fmt == "csv":
        return df.to_csv(index=False)
    if df.empty:
        return "(no rows)"
    return tabulate(df, headers="keys", tablefmt="github" if fmt == "markdown" else "simple", showindex=False)


# -- leaderboard columns ----------------------------------------------------------------------------------


def _current_hash(name: str) -> str | None:
    try:
        return get_candidate(name).source_hash()
    except RegistryError:
        return None


def bench_columns(
    store: RecordStore,
    candidates: Sequence[str] | None = None,
    ref_shape: tuple[int, int, int] = (1, 1024, 64),
    tier: str | None = None,
    device: str = "cpu",
    device_name: str | None = None,
    dtype: str = "float32",
    numerics_seq_len: int | None = None,
) -> pd.DataFrame:
    """One row per candidate (index), from stored records of the current source of each candidate:

    - ``fwd_bwd_tok_s``: forward+backward tokens/s of the ``parallel`` implementation at
      ``ref_shape = (batch, T, d_model)`` (``tier`` replaces d_model by the tier's), in ``dtype``;
    - ``time_exponent``: the log-log slope of that pass's median time over every stored T at the same
      batch, d_model, dtype, device and thread count;
    - ``bf16_err``: the parallel form's output RMS ratio against float64 in bfloat16, at
      ``numerics_seq_len`` (default: the longest stored T).

    Records of another machine (``device_name``, default this one's), an older source or an older
    measurement method are ignored.
    Missing values are NaN.
    """
    batch, seq_len, d_model = ref_shape
    if tier is not None:
        from harness.tiers import get_tier

        d_model = get_tier(tier).d_model
    dname = device_name or current_device_name(device)
    dtype = str(parse_dtype(dtype)).replace("torch.", "")
    tput, bad = store.records("throughput")
    nums, bad2 = store.records("numerics")
    for e in [*bad, *bad2]:
        print(f"warning: {e}", file=sys.stderr)
    wanted = (
        list(candidates)
        if candidates is not None
        else sorted({r["identity"].get("candidate") for r in tput + nums})
    )
    hashes = {n: _current_hash(n) for n in wanted}

    def current(rec: dict[str, Any]) -> bool:
        ident = rec.get("identity", {})
        name = ident.get("candidate")
        version = {"throughput": TPUT_VERSION, "numerics": NUM_VERSION}.get(rec.get("kind"))
        return (
            name in hashes
            and ident.get("method_version") == version
            and ident.get("source_hash") == hashes[name]
            and ident.get("device_name") == dname
            and rec.get("result", {}).get("status") == "ok"
        )

    out: dict[str, dict[str, float]] = {
        n: {"fwd_bwd_tok_s": math.nan, "time_exponent": math.nan, "bf16_err": math.nan} for n in wanted
    }
    series: dict[tuple, dict[int, tuple[str, float]]] = {}
    for rec in tput:
        if not current(rec):
            continue
        ident, res = rec["identity"], rec["result"]
        if ident.get("pass") != "fwd_bwd" or ident.get("impl") != "parallel" or ident.get("dtype") != dtype:
            continue
        if ident.get("batch") != batch or ident.get("d_model") != d_model:
            continue
        key = (ident["candidate"], ident.get("threads"))
        created = rec.get("created", "")
        prev = series.setdefault(key, {}).get(ident["seq_len"])
        if prev is None or created >= prev[0]:
            series[key][ident["seq_len"]] = (created, res["median_s"])
        if ident["seq_len"] == seq_len:
            cur = out[ident["candidate"]]
            if math.isnan(cur["fwd_bwd_tok_s"]) or created >= cur.get("_created", ""):
                cur["fwd_bwd_tok_s"] = res["tokens_per_s"]
                cur["_created"] = created  # type: ignore[assignment]
                cur["_threads"] = ident.get("threads")  # type: ignore[assignment]
    for (name, threads), pts in series.items():
        if out[name].get("_threads", threads) != threads:
            continue  # the exponent of the same thread count as the reported tokens/s
        ts = sorted(pts)
        e = fit_exponent(ts, [pts[t][1] for t in ts])
        if e is not None:
            out[name]["time_exponent"] = e
    best_len: dict[str, int] = {}
    for rec in nums:
        if not current(rec):
            continue
        ident, res = rec["identity"], rec["result"]
        if (
            ident.get("check") != "error"
            or ident.get("impl") != "parallel"
            or ident.get("dtype") != "bfloat16"
        ):
            continue
        T = ident["seq_len"]
        if numerics_seq_len is not None and T != numerics_seq_len:
            continue
        if T >= best_len.get(ident["candidate"], -1):
            best_len[ident["candidate"]] = T
            out[ident["candidate"]]["bf16_err"] = res.get("out_rms", math.nan)
    df = pd.DataFrame.from_dict(out, orient="index", columns=["fwd_bwd_tok_s", "time_exponent", "bf16_err"])
    df.index.name = "candidate"
    return df.astype(float)
