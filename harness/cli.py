"""The ``harness`` command line. Its forms are the public contract (README)."""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness import leaderboard as lb
from harness.allocator import tune_allocator
from harness.registry import (
    RegistryError,
    candidate_names,
    get_candidate,
    get_task,
    group_members,
    groups,
    modifier_names,
    task_names,
)
from harness.results import CorruptRecord, RecordStore
from harness.tiers import TIERS

DEFAULT_BASELINES = "softmax,diagonal"


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def parse_value(text: str) -> Any:
    """``--set`` values: Python literals (ints, floats, bools, tuples), else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = parse_value(val.strip())
    return out


def split_names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


# -- list ---------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    what = args.what or "all"
    cands = group_members(args.group) if args.group else candidate_names()
    cand_rows = []
    for n in cands:
        spec = get_candidate(n)
        cand_rows.append(
            {
                "name": n,
                "groups": list(spec.groups),
                "reference": spec.reference,
                "needs_cuda": spec.needs_cuda,
                "hparams": spec.hparam_defaults,
            }
        )
    task_rows = []
    for n in task_names():
        spec = get_task(n)
        task_rows.append({"name": n, "reference": spec.reference, "tiers": sorted(spec.cls.TIERS)})
    group_rows = [{"name": g, "candidates": members} for g, members in groups().items()]
    data: dict[str, Any] = {"candidates": cand_rows, "tasks": task_rows}
    if what == "groups" or what == "all":
        data["groups"] = group_rows
        data["modifiers"] = modifier_names()
    if what != "all":
        data = {what: data[what]}
    if args.format == "json":
        print(json.dumps(data, indent=2, default=str))
        return 0
    if "candidates" in data:
        print(
            tabulate(
                [[r["name"], ", ".join(r["groups"]), r["reference"]] for r in cand_rows],
                headers=["candidate", "groups", "reference"],
                tablefmt="simple",
            )
        )
    if "tasks" in data:
        print()
        print(
            tabulate(
                [[r["name"], ", ".join(r["tiers"]), r["reference"]] for r in task_rows],
                headers=["task", "tiers", "reference"],
                tablefmt="simple",
            )
        )
    if "groups" in data:
        print()
        print(
            tabulate(
                [[r["name"], ", ".join(r["candidates"])] for r in group_rows],
                headers=["group", "candidates"],
                tablefmt="simple",
                maxcolwidths=[None, 90],
            )
        )
        if data.get("modifiers"):
            print(f"\nmodifiers (X+<modifier> works for every candidate X): {', '.join(data['modifiers'])}")
    return 0


# -- run / compare / leaderboard ----------------------------------------------------------------
def _store(args: argparse.Namespace) -> RecordStore:
    return RecordStore(Path(args.results_dir))


def _tasks_arg(args: argparse.Namespace) -> list[str]:
    tasks = split_names(args.tasks) or task_names()
    for t in tasks:
        get_task(t)
    return tasks


def _compare_candidates(args: argparse.Namespace) -> list[str]:
    if args.candidates:
        names = split_names(args.candidates)
    elif args.group:
        names = group_members(args.group)
    else:
        raise CLIError("compare needs --group G or --candidates A,B")
    baselines = split_names(args.baselines)
    ordered = list(dict.fromkeys([*baselines, *names]))
    for n in ordered:
        get_candidate(n)
    return ordered


def _report_corrupt(bad: list[CorruptRecord]) -> None:
    for e in bad:
        print(f"warning: {e}", file=sys.stderr)


def _bench_extra(store: RecordStore, candidates: list[str]):
    from harness.bench.report import bench_columns

    return bench_columns(store, candidates)


def _print_board(args, records, candidates, tasks, title) -> None:
    extra = _bench_extra(_store(args), candidates) if getattr(args, "bench", False) else None
    board = lb.build_board(records, candidates, tasks, extra=extra)
    text = lb.render(board, args.format, title=None if args.format in ("json", "csv") else title)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"leaderboard written to {args.output}", file=sys.stderr)
    else:
        print(text)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.sweep import plan, run_sweep

    runs = plan(
        [args.candidate],
        [args.task],
        args.tier,
        seeds=[args.seed],
        lrs=[args.lr] if args.lr is not None else None,
        hparams={args.candidate: parse_sets(args.set, "--set")},
        task_overrides={args.task: parse_sets(args.task_set, "--task-set")},
        train_overrides=parse_sets(args.train_set, "--train-set"),
        device=args.device,
    )
    res = run_sweep(runs, _store(args), force=args.force, progress=not args.quiet)
    for rec in sorted(res.records, key=lambda r: (r["seed"], r["lr"])):
        print(json.dumps(_summary(rec), indent=2) if args.format == "json" else _summary_line(rec))
    return 1 if res.failed else 0


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "run_id",
        "candidate",
        "task",
        "tier",
        "seed",
        "lr",
        "status",
        "steps_done",
        "steps_to_solve",
        "valid_score",
        "valid",
        "test",
        "test_lengths",
        "params_mixer",
        "state",
        "wall_seconds",
        "error",
    )
    return {k: rec[k] for k in keys if k in rec}


def _summary_line(rec: dict[str, Any]) -> str:
    s = f"{rec['run_id']}  {rec['candidate']} on {rec['task']} ({rec['tier']}, seed {rec['seed']}, lr {rec['lr']:g}): "
    if rec["status"] == "ok":
        s += f"test token acc {rec['test']['token_acc']:.3f}, seq acc {rec['test']['seq_acc']:.3f}"
        for L, v in (rec.get("test_lengths") or {}).items():
            s += f"; T={L}: {v['token_acc']:.3f} (beyond training length {v['beyond_token_acc']:.3f})"
        solved = rec.get("steps_to_solve")
        s += f"; solved at step {solved}" if solved else f"; not solved in {rec.get('steps_done')} steps"
        s += f"  [{rec.get('wall_seconds', 0):.1f} s]"
    elif rec["status"] == "diverged":
        s += f"DIVERGED at step {rec.get('diverged_at_step')}"
    else:
        s += f"FAILED: {rec.get('error')}"
    return s


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.sweep import default_jobs, plan, run_sweep

    candidates = _compare_candidates(args)
    tasks = _tasks_arg(args)
    n_seeds, lrs = args.seeds, [float(x) for x in split_names(args.lrs)] or None
    if args.look:
        n_seeds = 1
        lrs = lrs or [_look_lr(args.tier, tasks)]
    runs = plan(
        candidates,
        tasks,
        args.tier,
        n_seeds=n_seeds,
        lrs=lrs,
        device=args.device,
        scheme=args.lr_search,
    )
    store = _store(args)
    t0 = time.perf_counter()
    jobs = args.jobs if args.jobs is not None else default_jobs()
    if jobs < 1:
        raise CLIError(f"--jobs must be >= 1, got {jobs}")
    res = run_sweep(runs, store, force=args.force, progress=not args.quiet, jobs=jobs)
    took = time.perf_counter() - t0
    print(
        f"{res.ran + res.reused} runs: {res.ran} trained, {res.reused} reused from {store.runs}; "
        f"{len(res.failed)} failed, {sum(r.get('status') == 'diverged' for r in res.records)} diverged "
        f"(new and reused); {took:.1f} s",
        file=sys.stderr,
    )
    title = _title(args.group or "compare", args.tier, look=args.look)
    _print_board(args, res.records, candidates, tasks, title)
    for rec in res.failed:
        print(f"failed: {rec['candidate']} on {rec['task']}: {rec['error']}", file=sys.stderr)
    return 1 if res.failed else 0


def _look_lr(tier: str, tasks: list[str]) -> float:
    """The fast look's one rate: the middle of the tier's grid."""
    from harness.train import task_tier

    grid = task_tier(tasks[0], tier).lrs
    return float(grid[len(grid) // 2])


def _title(name: str, tier: str, look: bool) -> str:
    title = (
        f"{name} — tier {tier}: test score at the rate chosen on valid (extrap where the task has lengths)"
    )
    if look:
        title = f"FAST LOOK, NOT A VERDICT (one seed, one rate) — {title}"
    return title


def cmd_leaderboard(args: argparse.Namespace) -> int:
    store = _store(args)
    records, bad = store.records("train")
    _report_corrupt(bad)
    candidates = None
    if args.candidates or args.group:
        candidates = _compare_candidates(args)
    tasks = split_names(args.tasks) or None
    records = lb.select_records(records, tier=args.tier, candidates=candidates, tasks=tasks)
    if not args.all_versions:
        from harness.sweep import current_records

        records, stale = current_records(records)
        if stale:
            print(
                f"note: {stale} stored records of older code or other settings left out (--all-versions keeps them)",
                file=sys.stderr,
            )
    if not records:
        raise CLIError(
            f"no stored {args.tier} records under {store.runs} for that selection; run `harness compare` first"
        )
    tasks = tasks or sorted({r["task"] for r in records})
    candidates = candidates or sorted({r["candidate"] for r in records})
    title = _title(args.group or "leaderboard", args.tier, look=False) + ", from stored records"
    _print_board(args, records, candidates, tasks, title)
    return 1 if bad else 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rec = store.find(args.run_id)
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    print(json.dumps(rec, indent=2, default=str))
    return 0


# -- check --------------------------------------------------------------------------------------
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def cmd_check(args: argparse.Namespace) -> int:
    import torch

    from harness.conformance import check_candidate, conforms

    names = list(args.names)
    if args.group:
        names += group_members(args.group)
    if not names:
        raise CLIError("check needs candidate names or --group G")
    names = list(dict.fromkeys(names))
    for n in names:
        get_candidate(n)
    dtypes = []
    for d in split_names(args.dtypes):
        if d not in _DTYPES:
            raise CLIError(f"--dtypes: unknown dtype {d!r}; allowed: bf16, fp16 (or bfloat16, float16)")
        dtypes.append(getattr(torch, _DTYPES[d]))
    results = {n: check_candidate(n, tuple(dtypes)) for n in names}
    failed = [n for n, rs in results.items() if not conforms(rs)]
    if args.format == "json":
        print(json.dumps({n: [r.as_dict() for r in rs] for n, rs in results.items()}, indent=2))
    else:
        rows = []
        for n, rs in results.items():
            for r in rs:
                worst = "-" if r.worst is None else f"{r.worst:.1e}"
                tol = "-" if r.tolerance is None else f"{r.tolerance:g}"
                rows.append(
                    [n, r.check, r.status.upper() if r.status == "fail" else r.status, worst, tol, r.detail]
                )
        print(
            tabulate(
                rows,
                headers=["candidate", "check", "status", "worst", "tolerance", "detail"],
                tablefmt="simple",
                maxcolwidths=[None, None, None, None, None, 90],
            )
        )
        print(
            f"\n{len(names) - len(failed)} of {len(names)} candidates conform"
            + (f"; failing: {', '.join(failed)}" if failed else "")
        )
    return 1 if failed else 0


# -- parser -------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser, formats: Sequence[str] = lb.FORMATS) -> None:
    p.add_argument("--results-dir", default="results", help="where records live (default ./results)")
    p.add_argument("--format", default="table", choices=formats)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="mixer-harness: sequence mixers head to head on fixed tasks and benchmarks",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="registered candidates, tasks and groups")
    p.add_argument("what", nargs="?", choices=["candidates", "tasks", "groups"])
    p.add_argument("--group", help="only candidates of this group")
    p.add_argument("--format", default="table", choices=["table", "json"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="train and score one candidate on one task")
    p.add_argument("--candidate", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--tier", default="quick", choices=sorted(TIERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="learning rate (default: the tier's first)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="candidate hyperparameter override")
    p.add_argument("--task-set", action="append", metavar="KEY=VALUE", help="task config override")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="training setting override")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="rerun even if a record exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p, ["table", "json"])
    p.set_defaults(func=cmd_run)

    for name, helptext in (
        ("compare", "run what is missing for a group, then print its leaderboard"),
        ("leaderboard", "the leaderboard from stored records only (no training)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--group", help="candidate group (see `harness list groups`)")
        p.add_argument("--candidates", help="comma-separated candidate names")
        p.add_argument("--tasks", help="comma-separated task names (default: all)")
        p.add_argument("--tier", default="quick", choices=sorted(TIERS))
        p.add_argument(
            "--baselines",
            default=DEFAULT_BASELINES,
            help=f"candidates always included (default {DEFAULT_BASELINES}; '' for none)",
        )
        p.add_argument(
            "--bench", action="store_true", help="add throughput/numerics columns from bench records"
        )
        p.add_argument("--output", help="write the leaderboard to this file instead of stdout")
        _add_common(p)
        if name == "compare":
            p.add_argument("--seeds", type=int, help="number of seeds (default: the tier's, 3 at quick)")
            p.add_argument("--lrs", help="comma-separated learning rates (default: the tier's grid)")
            p.add_argument(
                "--lr-search",
                default="first-seed",
                choices=["first-seed", "grid"],
                help="first-seed (default): the first seed tries every rate, the others run at the rate it "
                "chose on valid; grid: every seed at every rate, chosen by the mean over seeds",
            )
            p.add_argument(
                "--look",
                action="store_true",
                help="a fast look, not a verdict: one seed, one rate (the middle of the grid)",
            )
            p.add_argument("--device", default="cpu")
            p.add_argument("--force", action="store_true", help="rerun even if records exist")
            p.add_argument("--quiet", action="store_true", help="no progress bar")
            p.add_argument(
                "--jobs",
                type=int,
                default=None,
                help="runs in parallel (default: one per CPU core; each run uses 1 thread)",
            )
            p.set_defaults(func=cmd_compare)
        else:
            p.add_argument(
                "--all-versions",
                action="store_true",
                help="also use records of older candidate/engine code (default: only what compare would reuse)",
            )
            p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("check", help="conformance checks of candidates (built-in or plug-in)")
    p.add_argument("names", nargs="*", metavar="NAME", help="candidate names")
    p.add_argument("--group", help="every candidate of this group")
    p.add_argument("--dtypes", default="bf16,fp16", help="low-precision dtypes to check (default bf16,fp16)")
    p.add_argument("--format", default="table", choices=["table", "json"])
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("show", help="one stored record, by run id (or a unique prefix)")
    p.add_argument("run_id")
    p.add_argument("--results-dir", default="results")
    p.set_defaults(func=cmd_show)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Command families living in their own packages (benchmarks, history, gates)."""
    from harness.bench.cli import add_bench_commands
    from harness.gate.cli import add_gate_command
    from harness.history import add_history_commands

    add_bench_commands(sub)
    add_history_commands(sub)
    add_gate_command(sub)


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RegistryError, CLIError, ValueError) as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; finished runs are stored and will be reused", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
