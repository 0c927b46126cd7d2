"""The static site: ``index.html``, one page per group, the figures as SVG and PNG, the data as JSON.

Everything the pages use is a file next to them (a stylesheet, the figures); there is no script and
no remote URL, so the site opens from ``file://`` with no network. Every name and value that comes
from a record is HTML-escaped. Layout of ``OUTPUT``::

    index.html                 groups, provenance, files
    group-<group>.html         per group: leaderboard, figures, provenance
    style.css
    figures/<group>/*.svg|png  every figure, to embed elsewhere
    data/<group>-leaderboard.json, data/leaderboard.schema.json, report.json
"""

from __future__ import annotations

import datetime as dt
import html
import shlex
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import leaderboard as lb
from harness.report import data as rd
from harness.report import figures as fg
from harness.results import RecordStore, atomic_write_json, dumps_strict

LENGTH_TASKS_HINT = "parity,modular-arithmetic,s5"
SWEEP_HINT = "d_state=4,8,16,32"


@dataclass
class GroupPage:
    name: str
    slug: str
    candidates: list[str]
    records: list[dict[str, Any]]
    board: lb.Board
    figures: list[fg.Figure] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=dict)  # figure key -> HTML notes
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def page(self) -> str:
        return f"group-{self.slug}.html"


@dataclass
class Report:
    output: Path
    tier: str
    pages: list[GroupPage]
    provenance: dict[str, Any]
    warnings: list[str]

    @property
    def index(self) -> Path:
        return self.output / "index.html"


class ReportError(ValueError):
    """Nothing to report (a usage error: exit 2)."""


def e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cmd(*parts: str) -> str:
    return " ".join(shlex.quote(p) if i else p for i, p in enumerate(parts))


# -- provenance ------------------------------------------------------------------------------------
def machine_class(env: dict[str, Any]) -> str:
    """The machine class of a record's environment (``harness.machine``'s naming)."""
    from harness.machine import cpu_slug, gpu_slug

    if str(env.get("device", "cpu")).startswith("cuda") and env.get("device_name"):
        return gpu_slug(env["device_name"])
    cores = env.get("cpu_count")
    return f"cpu-{cpu_slug(env.get('cpu_model') or 'unknown')}" + (f"-{cores}c" if cores else "")


def _counted(values: list[Any], fmt=str) -> str:
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return "unknown"
    return ", ".join(f"{fmt(v)} ({n})" if len(counts) > 1 else fmt(v) for v, n in counts.most_common())


def provenance(
    records: list[dict[str, Any]], tier: str, board: lb.Board | None, store: rd.Store, history: str | None
) -> dict[str, Any]:
    """Where the numbers come from: the records' commits, dirtiness, machines, torch, dates, seeds."""
    from harness.environment import git_commit

    envs = [r.get("environment") or {} for r in records]
    dirty = sum(bool(env.get("git_dirty")) for env in envs)
    dates = sorted(d for d in (r.get("finished") or r.get("started") for r in records) if d)
    seeds = sorted({r.get("seed") for r in records if r.get("seed") is not None})
    per_cell = sorted({len(c.seeds) for c in board.cells.values()}) if board else []
    per_cell_text = "-".join(map(str, sorted({per_cell[0], per_cell[-1]}))) if per_cell else "0"
    bench_envs = [r.get("environment") or {} for r in store.throughput + store.numerics]
    sha, here_dirty = git_commit()
    return {
        "tier": tier,
        "records": len(records),
        "commit": _counted([env.get("git_commit") for env in envs], lambda s: str(s)[:10]),
        "dirty": f"{dirty} of {len(records)} records from a tree with uncommitted changes"
        if dirty
        else "no (every record from a clean tree)",
        "machine_class": _counted([machine_class(env) for env in envs]),
        "device": _counted([env.get("device_name") for env in envs]),
        "torch": _counted([env.get("torch") for env in envs]),
        "seeds": f"{per_cell_text} per cell at the chosen rate; seeds {', '.join(map(str, seeds)) or 'none'}",
        "dates": f"{dates[0]} to {dates[-1]}" if dates else "unknown",
        "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "built_by": f"harness at {sha[:10] if sha else 'unknown commit'}"
        + (" (dirty tree)" if here_dirty else ""),
        "bench_device": store.bench_device or "no benchmark records",
        "bench_commit": _counted([env.get("git_commit") for env in bench_envs], lambda s: str(s)[:10])
        if bench_envs
        else "no benchmark records",
        "history": history,
    }


PROVENANCE_LABELS = (
    ("tier", "tier"),
    ("seeds", "seeds"),
    ("records", "training records"),
    ("commit", "commit of the records"),
    ("dirty", "dirty"),
    ("machine_class", "machine class"),
    ("device", "device"),
    ("torch", "torch"),
    ("dates", "runs finished"),
    ("bench_device", "benchmarks measured on"),
    ("bench_commit", "commit of the benchmark records"),
    ("built", "report built"),
    ("built_by", "built by"),
)


def provenance_html(prov: dict[str, Any]) -> str:
    rows = [
        f"<tr><th>{e(label)}</th><td>{e(prov.get(key, ''))}</td></tr>" for key, label in PROVENANCE_LABELS
    ]
    if prov.get("history"):
        rows.append(
            f'<tr><th>history</th><td><a href="{e(prov["history"])}">asv history report</a> '
            "(its pages load their data, so open it through <code>harness history serve</code>)</td></tr>"
        )
    else:
        rows.append(
            "<tr><th>history</th><td>no published asv history under the results directory "
            "(<code>harness history publish</code> builds it)</td></tr>"
        )
    return '<section class="provenance"><h2>Provenance</h2><table>' + "".join(rows) + "</table></section>"


# -- HTML ------------------------------------------------------------------------------------------
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 24px 48px; color: #1a1a1a; }
nav { padding: 12px 0; border-bottom: 1px solid #ddd; margin-bottom: 12px; }
nav a { margin-right: 14px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #eee; }
h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
thead th { background: #f4f4f4; position: sticky; top: 0; }
tr.ref td { color: #666; font-style: italic; background: #fafafa; }
.provenance th { background: #f7f7f7; font-weight: 600; width: 220px; }
.board { overflow-x: auto; }
figure { margin: 16px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12.5px; color: #444; }
.missing { background: #fff7e0; border-left: 4px solid #e0a800; padding: 6px 10px; }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
ul.notes li { font-size: 12.5px; }
"""


def page_html(title: str, nav: list[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="{e(href)}">{e(text)}</a>' for text, href in nav)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{e(title)}</title>"
        '<link rel="stylesheet" href="style.css"></head>\n<body>'
        f"<nav>{links}</nav>\n<h1>{e(title)}</h1>\n{body}\n</body></html>\n"
    )


def table_html(frame: pd.DataFrame, ref_rows: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{e(c)}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cls = ' class="ref"' if values[0] in ref_rows else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(v)}</td>" for v in values) + "</tr>")
    return f'<div class="board"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def board_html(board: lb.Board) -> str:
    parts = [table_html(lb.main_frame(board), ref_rows=("(chance)", "(best trivial predictor)"))]
    parts.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in lb.notes(board)) + "</ul>")
    parts.append(
        "<h3>Chosen learning rate; seeds that solved the task @ median steps to solve; task rank</h3>"
    )
    parts.append(table_html(lb.detail_frame(board)))
    pairs = lb.modifier_pairs(board)
    if len(pairs):
        parts.append("<h3>Modifier pairs (ranking score: base -> modified (modified - base))</h3>")
        parts.append(table_html(pairs.fillna("-")))
    return "\n".join(parts)


def figure_html(fig: fg.Figure, page_dir: Path) -> str:
    svg = rd.relative(fig.svg, page_dir)
    png = rd.relative(fig.png, page_dir)
    return (
        f'<figure id="{e(fig.key)}"><img src="{e(svg)}" alt="{e(fig.title)}">'
        f'<figcaption>{fig.caption} Files: <a href="{e(svg)}">SVG</a>, <a href="{e(png)}">PNG</a>.</figcaption></figure>'
    )


def missing_html(what: str, command: str) -> str:
    return f'<p class="missing">{e(what)} <code>{e(command)}</code></p>'


# -- one group -------------------------------------------------------------------------------------
def _fmt_bytes(v: float) -> str:
    return fg.bytes_label(v)


def build_group(name: str, candidates: list[str], store: rd.Store, tier: str, fig_dir: Path) -> GroupPage:
    records = [r for r in store.train if r.get("candidate") in set(candidates)]
    tasks = sorted({r["task"] for r in records})
    tput = rd.throughput_frame(store.throughput, candidates)
    nums = rd.numerics_frame(store.numerics, candidates)
    extra = rd.bench_extra(tput, nums, candidates)
    board = lb.build_board(
        records,
        candidates=[c for c in candidates if any(r["candidate"] == c for r in records)],
        tasks=tasks,
        extra=extra,
    )
    page = GroupPage(name, rd.slug(name), board.ordered, records, board)
    names_arg = ",".join(board.ordered)
    summary: dict[str, Any] = {"candidates": board.ordered, "tasks": tasks}

    # quality vs speed
    notes: list[str] = []
    series = rd.main_series(tput)
    tok, T = rd.speed(series) if not series.empty else ({}, None)
    points = {}
    for c in board.ordered:
        q = rd.mean_score(board, c)
        if c in tok and q is not None:
            points[c] = (tok[c], q)
    if points:
        front = rd.pareto(points)
        fig = fg.quality_speed(points, front, T, fig_dir / "quality-speed")
        fig.caption = (
            f"Mean test score over the {len(tasks)} tasks (the ranking score: extrapolation where a task has "
            f"lengths) against forward+backward tokens/s of the parallel form at T={T}. "
            f"On the Pareto frontier: <b>{e(', '.join(front))}</b>."
        )
        page.figures.append(fig)
        summary["frontier"] = front
        summary["speed_seq_len"] = T
    no_speed = [c for c in board.ordered if c not in tok]
    incomplete = [c for c in board.ordered if c in tok and rd.mean_score(board, c) is None]
    if no_speed:
        notes.append(
            missing_html(
                f"No throughput records for {', '.join(no_speed)}; they are left out. To measure them:",
                _cmd("harness", "bench", "throughput", "--candidates", ",".join(no_speed)),
            )
        )
    if incomplete:
        notes.append(
            f"<p>Left out for missing task cells (no mean over every task): {e(', '.join(incomplete))}.</p>"
        )
    page.sections["quality-speed"] = notes

    # extrapolation
    notes = []
    length_tasks = [
        t for t in tasks if any(board.cell(c, t) and board.cell(c, t).has_lengths for c in board.ordered)
    ]
    for task in length_tasks:
        train_len = rd.training_length(records, task)
        curves = {}
        for c in board.ordered:
            cell = board.cell(c, task)
            if cell is None or not cell.finished or not cell.by_length:
                continue
            lengths = sorted(cell.by_length, key=int)
            xs = ([train_len] if train_len else []) + [int(L) for L in lengths]
            ys = ([cell.in_dist_mean] if train_len else []) + [cell.by_length[L] for L in lengths]
            curves[c] = (xs, ys)
        if not curves:
            continue
        ref = board.references.get(task)
        reference = None
        if ref is not None and ref.best is not None and ref.best.by_length:
            lengths = sorted(ref.best.by_length, key=int)
            xs = ([train_len] if train_len else []) + [int(L) for L in lengths]
            ys = ([ref.best.in_dist] if train_len else []) + [ref.best.by_length[L] for L in lengths]
            reference = (ref.best.name, xs, ys)
        fig = fg.extrapolation(
            task,
            curves,
            train_len,
            reference,
            ref.chance if ref else None,
            fig_dir / f"extrapolation-{rd.slug(task)}",
        )
        fig.caption = (
            f"{e(task)}: token accuracy at the training length (T={e(train_len)}, in distribution) and at each "
            "longer test length counting only positions beyond the training length; one line per candidate, "
            "at the rate chosen on valid, mean over seeds. Grey: the best trivial predictor and chance."
        )
        page.figures.append(fig)
    if not length_tasks:
        notes.append(
            missing_html(
                "No task with a length axis among this group's records. To run them:",
                _cmd(
                    "harness",
                    "compare",
                    *(("--group", name) if name != rd.OTHER_GROUP else ("--candidates", names_arg)),
                    "--tasks",
                    LENGTH_TASKS_HINT,
                    "--tier",
                    tier,
                ),
            )
        )
    summary["extrapolation_tasks"] = length_tasks
    page.sections["extrapolation"] = notes

    # recall vs state size
    notes = []
    pts = rd.state_points(records, board)
    if pts:
        smallest = rd.smallest_reaching(pts)
        fig = fg.recall_state(rd.RECALL_TASK, pts, smallest, fig_dir / "recall-state")
        rows = []
        for fam, best in smallest.items():
            fam_pts = [p for p in pts if p.family == fam]
            grows = any(p.grows for p in fam_pts)
            tried = ", ".join(
                f"{p.label or 'defaults'}: {_fmt_bytes(p.state_bytes)} -> {p.mean:.3f}" for p in fam_pts
            )
            verdict = (
                f"{_fmt_bytes(best.state_bytes)} ({best.label or 'defaults'}, accuracy {best.mean:.3f})"
                if best
                else f"none reaches {rd.RECALL_LEVEL} (best {max(p.mean for p in fam_pts):.3f})"
            )
            if grows:
                verdict += (
                    f"; a KV cache: this is its size at T={fam_pts[0].seq_len}, it grows linearly with T"
                )
            rows.append(f"<tr><td>{e(fam)}</td><td>{e(verdict)}</td><td>{e(tried)}</td></tr>")
        fig.caption = (
            f"{e(rd.RECALL_TASK)} test accuracy (mean, 95% interval over seeds) against the state measured by "
            "stepping the recurrent form (bytes per sequence per layer at the task's length), log scale; a "
            f"line per family through its sweep values; star: the smallest state whose mean reaches {rd.RECALL_LEVEL}."
            "<table><thead><tr><th>family</th><th>smallest state reaching "
            f"{rd.RECALL_LEVEL}</th><th>every point (value: state -> accuracy)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
        page.figures.append(fig)
        summary["smallest_state"] = {
            fam: (
                None
                if best is None
                else {
                    "candidate": best.candidate,
                    "state_bytes": best.state_bytes,
                    "mean": best.mean,
                    "grows_with_T": best.grows,
                }
            )
            for fam, best in smallest.items()
        }
        if not any(p.label for p in pts):
            notes.append(
                missing_html(
                    "No sweep among these records: one point per candidate. For curves along the state size:",
                    _cmd(
                        "harness",
                        "compare",
                        "--candidates",
                        names_arg,
                        "--tasks",
                        rd.RECALL_TASK,
                        "--sweep",
                        SWEEP_HINT,
                        "--tier",
                        tier,
                    ),
                )
            )
    else:
        notes.append(
            missing_html(
                f"No {rd.RECALL_TASK} records for this group. To run a state-size sweep:",
                _cmd(
                    "harness",
                    "compare",
                    "--candidates",
                    names_arg,
                    "--tasks",
                    rd.RECALL_TASK,
                    "--sweep",
                    SWEEP_HINT,
                    "--tier",
                    tier,
                ),
            )
        )
    page.sections["recall-state"] = notes

    # scaling
    notes = []
    if not series.empty:
        from harness.bench.measure import fit_exponent

        data: dict[str, dict] = {}
        exps: dict[str, dict] = {}
        for p in ("fwd", "fwd_bwd", "step"):
            impl = "step" if p == "step" else "parallel"
            sub = series[(series["pass"] == p) & (series["impl"] == impl)]
            for c in board.ordered:
                rows_c = sub[sub["candidate"] == c].sort_values("seq_len")
                if rows_c.empty:
                    continue
                T_ = [int(t) for t in rows_c["seq_len"]]
                med = [float(x) for x in rows_c["median_s"]]
                lo = [None if pd.isna(x) else float(x) for x in rows_c["p20_s"]]
                hi = [None if pd.isna(x) else float(x) for x in rows_c["p80_s"]]
                data.setdefault(p, {})[c] = (T_, med, lo, hi)
                exps.setdefault(p, {})[c] = fit_exponent(T_, med)
        if data:
            top = series.iloc[0]
            setting = (
                f"{top['dtype']}, batch {top['batch']}, d_model {top['d_model']}, {top['threads']} thread(s)"
            )
            fig = fg.scaling(data, exps, setting, fig_dir / "scaling")
            fig.caption = (
                f"Median time per call against T on log-log axes with the p20-p80 band ({e(setting)}, "
                f"{e(store.bench_device)}); e is the least-squares slope of log time on log T. Decode: one "
                "step with the state reached after T tokens (a KV cache grows; a recurrent state does not)."
            )
            page.figures.append(fig)
            summary["exponents"] = exps
    if series.empty:
        notes.append(
            missing_html(
                "No throughput records for this group. To measure them:",
                _cmd("harness", "bench", "throughput", "--candidates", names_arg),
            )
        )
    page.sections["scaling"] = notes

    # numerics
    notes = []
    if not nums.empty:
        cands = [c for c in board.ordered if c in set(nums["candidate"])]
        order = ["float32", "bfloat16", "float16", "float64"]
        dtypes = sorted(set(nums["dtype"]), key=lambda d: order.index(d) if d in order else 99)
        values = {
            (r.candidate, r.dtype): (
                None if pd.isna(r.out_rms) else float(r.out_rms),
                r.finite,
                int(r.seq_len),
            )
            for r in nums.itertuples()
        }
        fig = fg.numerics_heatmap(cands, dtypes, values, fig_dir / "numerics")
        lens = sorted(set(int(t) for t in nums["seq_len"]))
        fig.caption = (
            "Output RMS error of the parallel form relative to the float64 recurrent reference on the same "
            f"rounded weights and inputs, per dtype, at the longest T measured ({e(', '.join(map(str, lens)))}). "
            "Grey: not measured (e.g. a dtype the candidate does not support)."
        )
        page.figures.append(fig)
    missing_nums = [c for c in board.ordered if nums.empty or c not in set(nums["candidate"])]
    if missing_nums:
        notes.append(
            missing_html(
                f"No numerics records for {', '.join(missing_nums)}. To measure them:",
                _cmd("harness", "bench", "numerics", "--candidates", ",".join(missing_nums)),
            )
        )
    page.sections["numerics"] = notes
    page.summary = summary
    return page


SECTIONS = (
    ("quality-speed", "Quality vs speed"),
    ("extrapolation", "Extrapolation: accuracy against test length"),
    ("recall-state", "Recall vs state size"),
    ("scaling", "Scaling in T"),
    ("numerics", "Numerics"),
)


def group_html(page: GroupPage, report: Report, nav: list[tuple[str, str]]) -> str:
    out = report.output
    body = [
        f"<p>Tier <b>{e(report.tier)}</b>; {len(page.board.ordered)} candidates, tasks: {e(', '.join(page.board.tasks))}. "
        f'Data: <a href="data/{e(page.slug)}-leaderboard.json">leaderboard JSON</a> '
        '(<a href="data/leaderboard.schema.json">schema</a>).</p>'
    ]
    body.append('<h2 id="leaderboard">Leaderboard</h2>')
    body.append(board_html(page.board))
    for key, title in SECTIONS:
        body.append(f'<h2 id="section-{e(key)}">{e(title)}</h2>')
        for fig in page.figures:
            if fig.key == key or (key == "extrapolation" and fig.key.startswith("extrapolation-")):
                body.append(figure_html(fig, out))
        body.extend(page.sections.get(key, []))
    body.append(provenance_html(page.summary.get("provenance", report.provenance)))
    return page_html(f"{page.name} — tier {report.tier}", nav, "\n".join(body))


def index_html(report: Report, nav: list[tuple[str, str]]) -> str:
    rows = []
    for p in report.pages:
        figs = ", ".join(f.title for f in p.figures) or "none"
        rows.append(
            f'<tr><td><a href="{e(p.page)}">{e(p.name)}</a></td><td>{len(p.board.ordered)}</td>'
            f"<td>{e(', '.join(p.board.tasks))}</td><td>{e(figs)}</td></tr>"
        )
    body = [
        "<p>Leaderboards and figures built from stored records only (no training). Each group page has the "
        "leaderboard as the terminal shows it, quality vs speed, accuracy against test length, recall against "
        "state size, time against T and numerics; every figure is also an SVG and a PNG file under "
        "<code>figures/</code>.</p>",
        "<table><thead><tr><th>group</th><th>candidates</th><th>tasks</th><th>figures</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>",
    ]
    if report.warnings:
        body.append('<ul class="notes">' + "".join(f"<li>{e(w)}</li>" for w in report.warnings) + "</ul>")
    body.append(
        '<p>Machine-readable: <a href="report.json">report.json</a> (what each page shows), '
        "per group <code>data/&lt;group&gt;-leaderboard.json</code>, documented by "
        '<a href="data/leaderboard.schema.json">leaderboard.schema.json</a>.</p>'
    )
    body.append(provenance_html(report.provenance))
    return page_html(f"mixer-harness report — tier {report.tier}", nav, "\n".join(body))


# -- the whole site --------------------------------------------------------------------------------
def build_report(
    results_dir: str | Path = "results",
    output: str | Path | None = None,
    tier: str = "quick",
    groups: Sequence[str] | None = None,
    all_versions: bool = False,
    baselines: Sequence[str] = rd.DEFAULT_BASELINES,
) -> Report:
    """Read the stored records of ``tier`` and write the site under ``output``."""
    from harness.registry import group_members
    from harness.report import default_output

    results_dir = Path(results_dir)
    out = Path(output) if output is not None else default_output(results_dir)
    store = rd.load(RecordStore(results_dir), tier, all_versions)
    if not store.train:
        raise ReportError(
            f"no stored {tier} training records under {results_dir / 'runs'}"
            + (
                f" ({store.stale} of older code or other settings left out; --all-versions keeps them)"
                if store.stale
                else ""
            )
            + "; run `harness compare` first"
        )
    names = sorted({r["candidate"] for r in store.train})
    by_group = rd.group_of_names(names, baselines)
    if groups:
        wanted = {}
        for g in groups:
            if g in by_group:
                wanted[g] = by_group[g]
                continue
            members = group_members(g)  # raises for an unknown group, naming the known ones
            mine = [n for n in names if n in members or rd.base_name(n) in members]
            if not mine:
                raise ReportError(
                    f"no stored {tier} records of group {g!r}; run `harness compare --group {g} --tier {tier}` first"
                )
            base = [n for n in names if rd.base_name(n) in baselines]
            wanted[g] = list(dict.fromkeys([*base, *mine]))
        by_group = wanted
    warnings = [f"corrupt record left out: {c.path}" for c in store.corrupt]
    if store.stale:
        warnings.append(
            f"{store.stale} stored records of older code or other settings left out (--all-versions keeps them)"
        )
    for dev, n in store.bench_left_out.items():
        warnings.append(
            f"{n} benchmark records of another device ({dev}) left out: figures show {store.bench_device}"
        )

    if out.exists() and any(out.iterdir()):
        if not (out / "report.json").exists():
            raise ReportError(
                f"--output {out} is not empty and holds no earlier report: choose a new or empty folder"
            )
        for sub in ("figures", "data"):  # an earlier report: its files are replaced
            shutil.rmtree(out / sub, ignore_errors=True)
        for old in out.glob("group-*.html"):
            old.unlink()
    (out / "data").mkdir(parents=True, exist_ok=True)
    history = None
    asv_index = results_dir / "asv" / "html" / "index.html"
    if asv_index.exists():
        history = rd.relative(asv_index, out)
    pages = [
        build_group(g, cands, store, tier, out / "figures" / rd.slug(g)) for g, cands in by_group.items()
    ]
    all_board = lb.build_board(store.train)
    report = Report(out, tier, pages, provenance(store.train, tier, all_board, store, history), warnings)
    for p in pages:
        p.summary["provenance"] = provenance(p.records, tier, p.board, store, history)
    nav = [("index", "index.html")] + [(p.name, p.page) for p in pages]
    (out / "style.css").write_text(CSS.lstrip())
    shutil.copyfile(lb.SCHEMA_PATH, out / "data" / "leaderboard.schema.json")
    for p in pages:
        (out / p.page).write_text(group_html(p, report, nav))
        (out / "data" / f"{p.slug}-leaderboard.json").write_text(
            dumps_strict(lb.json_rows(p.board), indent=2) + "\n"
        )
    (out / "index.html").write_text(index_html(report, nav))
    atomic_write_json(out / "report.json", manifest(report))
    return report


def manifest(report: Report) -> dict[str, Any]:
    out = report.output
    return {
        "tier": report.tier,
        "provenance": report.provenance,
        "warnings": report.warnings,
        "groups": {
            p.name: {
                "page": p.page,
                "leaderboard": f"data/{p.slug}-leaderboard.json",
                "figures": {
                    f.key: {"svg": rd.relative(f.svg, out), "png": rd.relative(f.png, out)} for f in p.figures
                },
                **{k: v for k, v in p.summary.items()},
            }
            for p in report.pages
        },
    }
