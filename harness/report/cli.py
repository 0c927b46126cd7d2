"""``harness report``: the command-line entry of the static report."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from harness import options, validate


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="a static, offline HTML report (leaderboards, figures as SVG/PNG) from stored records",
        description=(
            "Build a self-contained static site from stored records only (no training): index.html and a "
            "page per group with the leaderboard, quality vs speed (Pareto frontier), accuracy against test "
            "length, recall against measured state size, time against T (log-log) and numerics; every "
            "figure also as SVG and PNG under figures/. Opens from file:// with no network."
        ),
    )
    options.add_list(p, "--group", help="groups to report (default: every group with records)")
    options.add_tier(p, "the tier whose records are reported")
    p.add_argument("--output", metavar="DIR", help="the site's folder (default <results-dir>/report)")
    options.add_results_dir(p)
    options.add_list(
        p,
        "--baselines",
        default=options.DEFAULT_BASELINES,
        help="candidates shown on every group page, as compare adds them "
        f"(default {options.DEFAULT_BASELINES}; '' for none)",
    )
    p.add_argument(
        "--all-versions",
        action="store_true",
        help="also use records of older candidate/engine code (default: only what compare would reuse)",
    )
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report.data import RECALL_LEVEL, RECALL_TASK
    from harness.report.site import build_report

    t0 = time.perf_counter()
    baselines = tuple(validate.name_list("--baselines", args.baselines, allow_empty=True))
    group_names = validate.name_list("--group", args.group) or None
    report = build_report(
        args.results_dir, args.output, args.tier, group_names, args.all_versions, baselines=baselines
    )
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for page in report.pages:
        figs = ", ".join(f.key for f in page.figures) or "no figures"
        print(f"{page.name}: {len(page.board.ordered)} candidates; {figs}")
        if page.summary.get("frontier"):
            print(f"  quality-vs-speed frontier: {', '.join(page.summary['frontier'])}")
        for fam, best in (page.summary.get("smallest_state") or {}).items():
            what = (
                f"none reaches {RECALL_LEVEL}"
                if best is None
                else f"{best['state_bytes']} B ({best['candidate']})"
            )
            print(f"  smallest state reaching {RECALL_LEVEL} on {RECALL_TASK}, {fam}: {what}")
    print(f"report written to {report.index} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if report.warnings and any(w.startswith("corrupt") for w in report.warnings) else 0
