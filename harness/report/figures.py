"""The report's figures, drawn with matplotlib (Agg: no display, no network) as SVG and PNG files.

Each function draws one figure from data already read (``harness.report.data``) and writes
``<stem>.svg`` and ``<stem>.png``; the SVG is what the page shows (sharp at any zoom, text drawn as
paths, so it looks the same without the fonts), the PNG is for a PR comment or a slide. Output is
reproducible: no date in the SVG metadata, fixed element ids. Candidate names are drawn as plain
text (``_t``: a ``$`` in a name is a dollar sign, not the start of mathtext).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from harness.report.data import RECALL_LEVEL, StatePoint  # noqa: E402

STYLE = {
    "svg.hashsalt": "mixer-harness",
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
    "savefig.bbox": "tight",
}
PNG_DPI = 120
MARKERS = "osD^v<>pPX*h"


@dataclass
class Figure:
    """A written figure: its files (relative to the report root once placed) and what it shows."""

    key: str
    title: str
    svg: Path
    png: Path
    caption: str = ""


def _t(text: object) -> str:
    """A name as literal text in a figure (matplotlib reads ``$...$`` as mathtext)."""
    return str(text).replace("$", r"\$")


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, stem: Path) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    svg, png = stem.with_suffix(".svg"), stem.with_suffix(".png")
    fig.savefig(svg, format="svg", metadata={"Date": None})
    fig.savefig(png, format="png", dpi=PNG_DPI, metadata={"Software": None})
    plt.close(fig)
    return svg, png


def bytes_label(v: float, _pos=None) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            x = v / size
            return f"{x:.0f} {unit}" if x >= 10 or x.is_integer() else f"{x:.1f} {unit}"
    return f"{v:.0f} B"


def _legend_outside(ax, n: int) -> None:
    if n:
        ax.legend(
            loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False, ncol=1 if n <= 22 else 2
        )


# -- quality vs speed ------------------------------------------------------------------------------
def quality_speed(
    points: dict[str, tuple[float, float]], frontier: Sequence[str], seq_len: int | None, stem: Path
) -> Figure:
    """Mean ranking score against forward+backward tokens/s (log axis); the Pareto frontier joined."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        names = list(points)
        cols = _colors(len(names))
        front = set(frontier)
        for i, name in enumerate(names):
            x, y = points[name]
            on = name in front
            ax.scatter(
                [x],
                [y],
                s=70 if on else 36,
                color=cols[i],
                marker=MARKERS[i % len(MARKERS)],
                edgecolors="black" if on else "none",
                linewidths=1.2,
                zorder=3,
                label=name,
            )
            ax.annotate(_t(name), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if frontier:
            fx = [points[n][0] for n in frontier]
            fy = [points[n][1] for n in frontier]
            ax.step(
                fx,
                fy,
                where="pre",
                color="black",
                lw=1,
                ls="--",
                alpha=0.6,
                zorder=2,
                label="Pareto frontier",
            )
        ax.set_xscale("log")
        ax.set_xlabel(
            f"forward+backward tokens/s (parallel form{f', T={seq_len}' if seq_len else ''}; higher is faster)"
        )
        ax.set_ylabel("mean test score over the tasks")
        ys = [y for _, y in points.values()]
        pad = max(0.05, 0.1 * (max(ys) - min(ys)))
        ax.set_ylim(max(-0.02, min(ys) - pad), min(1.05, max(ys) + pad))
        ax.set_title("Quality vs speed (frontier: no other candidate is both faster and better)")
        _legend_outside(ax, len(names) + bool(frontier))
        svg, png = _save(fig, stem)
    return Figure("quality-speed", "Quality vs speed", svg, png)


# -- extrapolation ---------------------------------------------------------------------------------
def extrapolation(
    task: str,
    curves: dict[str, tuple[list[int], list[float]]],
    train_len: int | None,
    reference: tuple[str, list[int], list[float]] | None,
    chance: float | None,
    stem: Path,
) -> Figure:
    """Accuracy against test length, one line per candidate; the first point of each line is the
    in-distribution accuracy at the training length, the others count only positions beyond it."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        cols = _colors(len(curves))
        for i, (name, (xs, ys)) in enumerate(curves.items()):
            ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.3, color=cols[i], label=_t(name))
        if reference is not None:
            rname, rx, ry = reference
            ax.plot(rx, ry, color="grey", ls="--", lw=1.2, label=_t(f"best trivial predictor ({rname})"))
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.3g})")
        if train_len:
            ax.axvline(train_len, color="black", lw=0.8, alpha=0.5)
            ax.annotate(
                "training length",
                (train_len, 0.02),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=7,
                alpha=0.7,
            )
        ticks = sorted({x for xs, _ in curves.values() for x in xs})
        ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("sequence length (first point: training length, in distribution; then beyond it only)")
        ax.set_ylabel("token accuracy")
        ax.set_title(_t(f"{task}: accuracy against test length"))
        _legend_outside(ax, len(curves) + (reference is not None) + (chance is not None))
        svg, png = _save(fig, stem)
    return Figure(f"extrapolation-{task}", f"Extrapolation: {task}", svg, png)


# -- recall vs state size ----------------------------------------------------------------------------
def recall_state(
    task: str, points: list[StatePoint], smallest: dict[str, StatePoint | None], stem: Path
) -> Figure:
    """Score against measured state bytes (log axis): a line per family through its sweep values, a
    star on the smallest state that reaches ``RECALL_LEVEL``; a growing state (KV cache) is drawn
    hollow at its size at the task's length."""
    families = list(dict.fromkeys(p.family for p in points))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        cols = dict(zip(families, _colors(len(families))))
        for i, fam in enumerate(families):
            pts = [p for p in points if p.family == fam]
            xs = [p.state_bytes for p in pts]
            ys = [p.mean for p in pts]
            err = [[max(p.mean - p.low, 0) for p in pts], [max(p.high - p.mean, 0) for p in pts]]
            grows = any(p.grows for p in pts)
            label = _t(fam) + (f" (KV cache at T={pts[0].seq_len}; grows with T)" if grows else "")
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                color=cols[fam],
                marker=MARKERS[i % len(MARKERS)],
                ms=6,
                lw=1.3,
                capsize=2,
                mfc="white" if grows else cols[fam],
                label=label,
            )
            for p in pts:
                if p.label:
                    ax.annotate(
                        p.label,
                        (p.state_bytes, p.mean),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=6,
                    )
            best = smallest.get(fam)
            if best is not None:
                ax.scatter(
                    [best.state_bytes],
                    [best.mean],
                    marker="*",
                    s=220,
                    color=cols[fam],
                    edgecolors="black",
                    zorder=4,
                )
        ax.axhline(RECALL_LEVEL, color="black", ls="--", lw=0.8, alpha=0.6)
        ax.annotate(
            f"{RECALL_LEVEL}",
            (1, RECALL_LEVEL),
            xycoords=("axes fraction", "data"),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=7,
        )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(bytes_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("measured state per sequence per layer (bytes, log scale)")
        ax.set_ylabel(_t(f"{task} test accuracy (mean, 95% interval)"))
        ax.set_title(_t(f"Recall vs state size: {task}") + f" (star: smallest state reaching {RECALL_LEVEL})")
        _legend_outside(ax, len(families))
        svg, png = _save(fig, stem)
    return Figure("recall-state", f"Recall vs state size ({task})", svg, png)


# -- scaling ---------------------------------------------------------------------------------------
PASS_TITLES = {"fwd": "forward", "fwd_bwd": "forward+backward", "step": "decode step (state after T tokens)"}
PASS_SHORT = {"fwd": "fwd", "fwd_bwd": "fwd+bwd", "step": "decode"}


def scaling(
    series: dict[str, dict[str, tuple[list[int], list[float], list[float], list[float]]]],
    exponents: dict[str, dict[str, float | None]],
    setting: str,
    stem: Path,
) -> Figure:
    """Median time per call against T on log-log axes (p20-p80 band), one panel per pass; the legend
    gives each line's fitted exponent (time ~ T^e)."""
    passes = [p for p in PASS_TITLES if p in series]
    cands = list(dict.fromkeys(c for p in passes for c in series[p]))
    cols = dict(zip(cands, _colors(len(cands))))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(passes), figsize=(3.4 * len(passes) + 2.6, 3.8), squeeze=False, layout="constrained"
        )
        for ax, p in zip(axes[0], passes):
            for i, cand in enumerate(cands):
                if cand not in series[p]:
                    continue
                T, med, lo, hi = series[p][cand]
                ax.plot(
                    T, med, marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.2, color=cols[cand], label=_t(cand)
                )
                if all(v is not None for v in lo + hi):
                    ax.fill_between(T, lo, hi, color=cols[cand], alpha=0.15, lw=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
            ax.set_xlabel("T (tokens)")
            if ax is axes[0][0]:
                ax.set_ylabel("median seconds per call")
            ax.set_title(PASS_TITLES[p])
        handles = []
        for i, cand in enumerate(cands):
            es = [exponents[p].get(cand) for p in passes]
            text = " / ".join("-" if x is None else f"{x:.2f}" for x in es)
            handles.append(
                Line2D(
                    [],
                    [],
                    color=cols[cand],
                    marker=MARKERS[i % len(MARKERS)],
                    ms=4,
                    label=f"{_t(cand)}: e = {text}",
                )
            )
        names = " / ".join(PASS_SHORT[p] for p in passes)
        fig.legend(
            handles=handles,
            title=f"exponent e ({names})",
            loc="outside right upper",
            fontsize=7,
            title_fontsize=7,
            frameon=False,
        )
        fig.suptitle(_t(f"Time against T, log-log, fitted exponent e ({setting})"), fontsize=10)
        svg, png = _save(fig, stem)
    return Figure("scaling", "Scaling in T", svg, png)


# -- numerics --------------------------------------------------------------------------------------
def numerics_heatmap(
    candidates: list[str],
    dtypes: list[str],
    values: dict[tuple[str, str], tuple[float | None, bool | None, int]],
    stem: Path,
) -> Figure:
    """Output RMS error ratio against float64 (log colour scale) per candidate and dtype, at the
    longest T measured; grey: not measured, red text: not finite."""
    import numpy as np

    grid = np.full((len(candidates), len(dtypes)), np.nan)
    for (c, d), (v, _finite, _T) in values.items():
        if v is not None and v > 0 and c in candidates and d in dtypes:
            grid[candidates.index(c), dtypes.index(d)] = v
    finite_vals = grid[np.isfinite(grid)]
    lo = float(finite_vals.min()) if finite_vals.size else 1e-8
    hi = float(finite_vals.max()) if finite_vals.size else 1.0
    if hi <= lo:
        lo, hi = lo / 10, hi * 10
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(2.0 + 1.4 * len(dtypes), 1.0 + 0.32 * len(candidates)))
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        im = ax.imshow(
            np.ma.masked_invalid(grid), cmap=cmap, norm=mcolors.LogNorm(vmin=lo, vmax=hi), aspect="auto"
        )
        for i, c in enumerate(candidates):
            for j, d in enumerate(dtypes):
                v, finite, T = values.get((c, d), (None, None, 0))
                if (c, d) not in values:
                    text, color = "-", "black"
                elif finite is False:
                    text, color = "not finite", "red"
                elif v is None:
                    text, color = "-", "black"
                else:
                    text = f"{v:.1e}"
                    frac = (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) if v > 0 else 0
                    color = "white" if frac < 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(dtypes)), dtypes)
        ax.set_yticks(range(len(candidates)), [_t(c) for c in candidates])
        ax.tick_params(axis="y", labelsize=7)
        fig.colorbar(im, ax=ax, label="output RMS error / RMS (vs float64)", shrink=0.9)
        ax.set_title("Numerics: parallel form vs float64 reference")
        svg, png = _save(fig, stem)
    return Figure("numerics", "Numerics vs float64", svg, png)
