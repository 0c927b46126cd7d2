"""The ``harness`` command line. Its forms are the public contract (README).

Every subcommand, of every family (``bench``, ``gate``, ``history``, ``report``, ...), runs through
``main``: one error policy and one set of exit codes (``harness.errors``). Importing this module and
building the parser import nothing heavy (no torch, pandas, scipy, tqdm or matplotlib): a command's
modules are imported when it runs, so ``harness --help`` answers at once.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import options, validate
from harness.errors import EXIT_CODES, CommandFailed, UsageError
from harness.options import DEFAULT_BASELINES
from harness.registry import (
    RegistryError,
    candidate_names,
    get_candidate,
    get_task,
    group_members,
    groups,
    modifier_names,
    plugin_errors,
    task_names,
)
from harness.results import CorruptRecord, RecordStore, dumps_strict

if TYPE_CHECKING:
    from harness import leaderboard as lb


class CLIError(UsageError):
    """A user error: printed as one line, exit code 2."""


def parse_value(text: str) -> Any:
    """``--set`` values: Python literals (ints, floats, bools, tuples), else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(text)  # a float the checks can refuse by name
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"{flag} expects key=value, got {item!r}")
        if key in out:
            raise CLIError(
                f"{flag} {key}=... is given twice ({key}={seen[key]} and {key}={val.strip()}); give it once"
            )
        out[key] = parse_value(val.strip())
        seen[key] = val.strip()
    return out


def split_names(text: str | None) -> list[str]:
    """Comma-separated names; commas inside a variant label's brackets (``x[a=1,b=2]``) stay."""
    from harness.variants import split_top

    return [n.strip() for n in split_top(text or "") if n.strip()]


# -- list ---------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

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
    broken = plugin_errors()
    if broken:
        data["plugin_errors"] = [
            {"entry_point": e.name, "group": e.group, "value": e.value, "error": e.error} for e in broken
        ]
    if args.format == "json":
        print(dumps_strict(data, indent=2, default=str))
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
def _store(args: argparse.Namespace, write: bool = True, then: str = "") -> RecordStore:
    """The record store of ``--results-dir``, checked (``write``: we can create records there); a
    corrupt record met while reading is reported on stderr the moment it is set aside."""
    root = validate.check_results_dir(args.results_dir, write=write)
    if not write and not root.is_dir():
        raise CLIError(
            f"--results-dir {args.results_dir}: no such directory; it is where `harness compare` stores records"
        )

    def report(e: CorruptRecord) -> None:
        print(f"harness: warning: {e}{then}", file=sys.stderr)

    return RecordStore(root, on_corrupt=report)


def _tasks_arg(args: argparse.Namespace) -> list[str]:
    tasks = validate.name_list("--tasks", args.tasks) or task_names()
    for t in tasks:
        get_task(t)
    return tasks


def _compare_candidates(args: argparse.Namespace, command: str = "compare") -> list[str]:
    """The baselines, then ``--candidates``, then the members of ``--group``: both together put
    your candidates on a group's board (``--candidates my-mixer --group transitions``)."""
    names: list[str] = []
    if args.candidates is not None:
        names += validate.name_list("--candidates", args.candidates)
    if args.group:
        names += group_members(args.group)
    if args.candidates is None and not args.group:
        raise CLIError(f"{command} needs --group G or --candidates A,B")
    baselines = validate.name_list("--baselines", args.baselines, allow_empty=True)
    ordered = list(dict.fromkeys([*baselines, *names]))
    for n in ordered:
        get_candidate(n)
    return ordered


def _bench_extra(args: argparse.Namespace, candidates: list[str]):
    from harness.bench.report import bench_columns

    return bench_columns(RecordStore(Path(args.results_dir)), candidates)


def _seed_from_snapshot(args: argparse.Namespace) -> None:
    """Copy the committed snapshot of this machine class into the store (``harness.snapshots``)."""
    if getattr(args, "no_snapshot", False) or getattr(args, "device", "cpu") != "cpu":
        return
    from harness.machine import detect
    from harness.snapshots import seed_store, snapshot_path

    path = snapshot_path(args.tier, detect("cpu").name)
    if not path.exists():
        return
    copied = seed_store(_store(args), path)
    if copied:
        print(
            f"{copied} records copied from the committed snapshot {path} (this machine class; "
            "--no-snapshot trains everything)",
            file=sys.stderr,
        )


def _stored_nonconforming(store: RecordStore, candidates: list[str]) -> dict[str, list[str]]:
    """Candidates whose stored conformance verdict (for their current sources) is a failure."""
    from harness.conformance import stored_verdict

    out = {}
    for name in candidates:
        verdict = stored_verdict(name, store)
        if verdict is not None and verdict.get("status") != "conforms":
            out[name] = list(verdict.get("failed") or [])
    return out


def _print_board(args, records, candidates, tasks, title, nonconforming=None) -> lb.Board:
    from harness import leaderboard as lb

    extra = _bench_extra(args, candidates) if getattr(args, "bench", False) else None
    if nonconforming is None:
        nonconforming = _stored_nonconforming(_store(args, write=False), candidates)
    board = lb.build_board(records, candidates, tasks, extra=extra, nonconforming=nonconforming)
    text = lb.render(board, args.format, title=None if args.format in ("json", "csv") else title)
    if args.output:
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
        except OSError as e:
            print(text)
            raise CommandFailed(
                f"--output {args.output}: could not write the leaderboard ({e.strerror or e}); it is printed above"
            ) from None
        print(f"leaderboard written to {args.output}", file=sys.stderr)
    else:
        print(text)
    return board


def _check_run_inputs(
    candidates: list[str],
    tasks: list[str],
    tier: str,
    hparams: dict[str, Any],
    task_sets: dict[str, Any],
    train_sets: dict[str, Any],
) -> dict[str, Any]:
    """The one validation pass over what a run or compare was given, before any run starts; the
    training overrides (checked and normalised)."""
    from harness.train import task_tier
    from harness.variants import parse_variant

    train_sets = validate.check_train_settings(train_sets)
    for task in tasks:
        get_task(task)
        validate.check_task_settings(task, tier, task_sets)
        d_model = task_tier(task, tier, train_sets).d_model
        d_model_flag = "--train-set" if "d_model" in train_sets else None
        for cand in candidates:
            base, label = parse_variant(cand)  # a variant label's values are checked like --set's
            flag = f"variant {cand}:" if label else "--set"
            validate.check_hparams(base, {**label, **hparams}, d_model, flag=flag, d_model_flag=d_model_flag)
    return train_sets


def cmd_run(args: argparse.Namespace) -> int:
    from harness.sweep import plan, run_sweep

    store = _store(args, then="; its run is redone")
    device = validate.check_device(args.device, local=args.executor == "local")
    hparams = parse_sets(args.set, "--set")
    task_sets = parse_sets(args.task_set, "--task-set")
    train_sets = _check_run_inputs(
        [args.candidate],
        [args.task],
        args.tier,
        hparams,
        task_sets,
        parse_sets(args.train_set, "--train-set"),
    )
    runs = plan(
        [args.candidate],
        [args.task],
        args.tier,
        seeds=[args.seed],
        lrs=[args.lr] if args.lr is not None else None,
        hparams={args.candidate: hparams},
        task_overrides={args.task: task_sets},
        train_overrides=train_sets,
        device=device,
    )
    options = validate.check_executor(
        args.executor, device, args.address, args.cpus_per_run, args.gpus_per_run
    )
    res = run_sweep(
        runs,
        store,
        force=args.force,
        progress=not args.quiet,
        executor=args.executor,
        executor_options=options,
        retries=args.retries,
    )
    if res.nonconforming or res.skipped:
        return 1
    for rec in sorted(res.records, key=lambda r: (r["seed"], r["lr"])):
        print(dumps_strict(_summary(rec), indent=2) if args.format == "json" else _summary_line(rec))
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

    store = _store(args, then="; its run is redone")
    validate.check_output_file(args.output)
    device = validate.check_device(args.device, local=args.executor == "local")
    options = validate.check_executor(
        args.executor, device, args.address, args.cpus_per_run, args.gpus_per_run
    )
    candidates = _swept(args, _compare_candidates(args))
    tasks = _tasks_arg(args)
    task_sets = parse_sets(args.task_set, "--task-set")
    if task_sets and len(tasks) != 1:
        raise CLIError(
            f"--task-set sets one task's config: give exactly one task with --tasks (got {', '.join(tasks)})"
        )
    _check_run_inputs(candidates, tasks, args.tier, {}, task_sets, {})
    n_seeds, lrs = args.seeds, args.lrs
    if args.look:
        if n_seeds not in (None, 1):
            raise CLIError(f"--look runs one seed; --seeds {n_seeds} contradicts it (drop one of them)")
        n_seeds = 1
        lrs = lrs or [_look_lr(args.tier, tasks)]
    runs = plan(
        candidates,
        tasks,
        args.tier,
        n_seeds=n_seeds,
        lrs=lrs,
        device=device,
        scheme=args.lr_search,
        task_overrides={tasks[0]: task_sets} if task_sets else None,
    )
    t0 = time.perf_counter()
    jobs = args.jobs if args.jobs is not None else default_jobs()
    _seed_from_snapshot(args)
    res = run_sweep(
        runs,
        store,
        force=args.force,
        progress=not args.quiet,
        jobs=jobs,
        executor=args.executor,
        executor_options=options,
        retries=args.retries,
    )
    took = time.perf_counter() - t0
    candidates = [c for c in candidates if c not in res.skipped]
    print(
        f"{res.ran + res.reused} runs: {res.ran} trained, {res.reused} reused from {store.runs}; "
        f"{len(res.failed)} failed, {sum(r.get('status') == 'diverged' for r in res.records)} diverged "
        f"(new and reused); {took:.1f} s"
        + (
            f"; {res.from_other_sweeps} written by another sweep on this store"
            if res.from_other_sweeps
            else ""
        ),
        file=sys.stderr,
    )
    title = _title(args.group or "compare", args.tier, look=args.look)
    nonconforming = {name: list(v.get("failed") or []) for name, v in res.nonconforming.items()}
    _print_board(args, res.records, candidates, tasks, title, nonconforming)
    for rec in res.failed:
        print(f"failed: {rec['candidate']} on {rec['task']}: {rec['error']}", file=sys.stderr)
    _report_hint(args)
    return 1 if res.failed or res.nonconforming or res.skipped else 0


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
    from harness import leaderboard as lb

    validate.check_output_file(args.output)
    candidates = None
    if args.candidates is not None or args.group:
        candidates = _swept(args, _compare_candidates(args, "leaderboard"))
    elif args.sweep:
        raise CLIError("--sweep needs --group or --candidates (the candidates to sweep)")
    tasks = _tasks_arg(args)
    store = _store(args, write=False, then="; left out of the board (`harness compare` redoes its run)")
    _seed_from_snapshot(args)  # only once every input is checked: a bad invocation writes nothing
    records, bad = store.records("train")
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
        if bad:
            raise CommandFailed(
                f"no usable {args.tier} records under {store.runs} for that selection ({len(bad)} corrupt, "
                "set aside above); `harness compare` redoes their runs"
            )
        raise CLIError(
            f"no stored {args.tier} records under {store.runs} for that selection; run `harness compare` first"
        )
    candidates = candidates or sorted({r["candidate"] for r in records})
    title = _title(args.group or "leaderboard", args.tier, look=False) + ", from stored records"
    board = _print_board(args, records, candidates, tasks, title)
    _report_hint(args)
    missing = [
        (c, t)
        for c in board.candidates
        for t in board.tasks
        if board.cell(c, t) is None and c not in board.nonconforming
    ]
    if missing:
        by_cand: dict[str, list[str]] = {}
        for c, t in missing:
            by_cand.setdefault(c, []).append(t)
        shown = "; ".join(f"{c}: {', '.join(ts)}" for c, ts in list(by_cand.items())[:6])
        more = "; ..." if len(by_cand) > 6 else ""
        print(
            f"harness: incomplete leaderboard: {len(missing)} of {len(board.candidates) * len(board.tasks)} cells "
            f"have no stored records ({shown}{more}); those candidates get no rank. `harness compare` with the "
            "same selection fills them; --tasks narrows the board",
            file=sys.stderr,
        )
    return 1 if bad or missing else 0


def _swept(args: argparse.Namespace, candidates: list[str]) -> list[str]:
    """``--sweep key=v1,v2``: each candidate with that hyperparameter as one labelled variant per
    value (``diagonal[d_state=8]``); the others are said so and run at their defaults."""
    if not args.sweep:
        return candidates
    from harness.variants import expand_sweep, parse_sweep

    names, notes = expand_sweep(
        candidates, [parse_sweep(s) for s in args.sweep], lambda n: get_candidate(n).hparam_defaults
    )
    for note in notes:
        print(note, file=sys.stderr)
    return names


def _report_hint(args: argparse.Namespace) -> None:
    """Where the report of these records would go (``harness report`` builds it)."""
    import shlex

    from harness.report import default_output

    group = f" --group {shlex.quote(args.group)}" if args.group else ""
    where = "" if args.results_dir == "results" else f" --results-dir {shlex.quote(args.results_dir)}"
    out = default_output(args.results_dir) / "index.html"
    print(f"report: `harness report{group} --tier {args.tier}{where}` writes {out}", file=sys.stderr)


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args, write=False)
    try:
        rec = store.find(args.run_id)
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    except CorruptRecord as e:
        raise CommandFailed(
            f"record {e.path.stem} is corrupt (set aside, see above); `harness compare` redoes its run"
        ) from None
    print(dumps_strict(rec, indent=2, default=str))
    return 0


# -- snapshot -----------------------------------------------------------------------------------
def cmd_snapshot(args: argparse.Namespace) -> int:
    """Merge the stored records a leaderboard of this selection uses into the committed snapshot."""
    from harness import leaderboard as lb
    from harness.conformance import stored_verdict
    from harness.machine import detect
    from harness.snapshots import export, snapshot_path
    from harness.sweep import current_records

    store = _store(args)
    candidates = (
        _swept(args, _compare_candidates(args, "snapshot"))
        if (args.group or args.candidates is not None)
        else None
    )
    tasks = split_names(args.tasks) or None
    records, _ = store.records("train")
    records, _ = current_records(
        lb.select_records(records, tier=args.tier, candidates=candidates, tasks=tasks)
    )
    if not records:
        raise CLIError(f"no current {args.tier} records under {store.runs} for that selection")
    names = sorted({r["candidate"] for r in records} | set(candidates or []))
    verdicts = [v for v in (stored_verdict(n, store) for n in names) if v is not None]
    path = Path(args.output) if args.output else snapshot_path(args.tier, detect("cpu").name)
    total = export(store, path, records + verdicts)
    print(
        f"{len(records)} training records and {len(verdicts)} conformance verdicts merged into {path} ({total} records)"
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check every record of a store; set aside (``*.corrupt``) and report what fails."""
    store = RecordStore(validate.check_results_dir(args.results_dir, write=False))
    if not store.root.is_dir():
        raise CLIError(f"--results-dir {args.results_dir}: no such directory")
    earlier = store.corrupt_files()
    counts: dict[str, int] = {}
    good, bad = store.records()
    for r in good:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    print(f"{store.runs}: {len(good) + len(bad)} record files checked; {len(good)} good ({by_kind})")
    if bad:
        print(f"set aside {len(bad)} corrupt record(s); `harness compare` redoes their runs:")
        for e in bad:
            print(
                f"  {e.path}: {e.reason} -> {e.moved_to.name if e.moved_to else 'NOT MOVED: ' + str(e.move_error)}"
            )
    if earlier:
        print(f"{len(earlier)} file(s) set aside earlier (delete them once you have looked):")
        for path in earlier:
            print(f"  {path}")
    stray = store.stray_files()
    if stray:
        print(
            f"{len(stray)} file(s) out of place (temporary files of interrupted writes, or not in a kind folder):"
        )
        for path in stray:
            print(f"  {path}")
    if not bad and not earlier and not stray:
        print("the store is healthy")
    return 1 if bad else 0


# -- check --------------------------------------------------------------------------------------
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def cmd_check(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from harness.conformance import check_candidate, conforms

    names = [n for arg in args.names for n in split_names(arg)]  # NAME ... or A,B
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
        print(dumps_strict({n: [r.as_dict() for r in rs] for n, rs in results.items()}, indent=2))
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
def _add_common(p: argparse.ArgumentParser, formats: Sequence[str] = options.BOARD_FORMATS) -> None:
    options.add_results_dir(p)
    options.add_format(p, formats)


class _Version(argparse.Action):
    """``--version``: the installed package's version (read from its metadata when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from harness import version

        print(f"mixer-harness {version()}")
        parser.exit()


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    """Where runs execute, and what a failed run gets (``harness.executors``, ``harness.sweep``)."""
    p.add_argument(
        "--executor",
        default="local",
        choices=["local", "ray"],
        help="local: worker processes on this machine (default); ray: Ray tasks on a cluster",
    )
    p.add_argument(
        "--address", help="with --executor ray: the cluster to join (auto, or host:port; default: start one)"
    )
    p.add_argument(
        "--cpus-per-run",
        type=validate.positive_number,
        help="with --executor ray: CPUs each run reserves (default 1; runs are single-threaded)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=validate.fraction_or_count,
        help="with --executor ray: GPUs each run reserves, fractions share one (default 1 with --device cuda)",
    )
    p.add_argument(
        "--retries",
        type=validate.int_at_least(0),
        default=1,
        help="times a stored failed run is tried again by later sweeps before it is left failed (default 1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="mixer-harness: sequence mixers head to head on fixed tasks and benchmarks",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version of mixer-harness and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="registered candidates, tasks and groups")
    p.add_argument(
        "what", nargs="?", choices=["candidates", "tasks", "groups"], help="only this part (default: all)"
    )
    p.add_argument("--group", help="only candidates of this group")
    options.add_format(p, ["table", "json"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="train and score one candidate on one task")
    p.add_argument("--candidate", required=True, help="a candidate name (or a variant: name[key=value])")
    p.add_argument("--task", required=True, help="a task name (see `harness list tasks`)")
    options.add_tier(p)
    p.add_argument("--seed", type=validate.int_at_least(0), default=0, help="the run's seed (default 0)")
    p.add_argument("--lr", type=validate.learning_rate, help="learning rate (default: the tier's first)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="candidate hyperparameter override")
    p.add_argument("--task-set", action="append", metavar="KEY=VALUE", help="task config override")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="training setting override")
    options.add_device(p, what="the device to train on")
    p.add_argument("--force", action="store_true", help="rerun even if a record exists")
    options.add_quiet(p)
    _add_executor_flags(p)
    _add_common(p, ["table", "json"])
    p.set_defaults(func=cmd_run, on_interrupt="finished runs are stored and will be reused")

    for name, helptext in (
        ("compare", "run what is missing for a group, then print its leaderboard"),
        ("leaderboard", "the leaderboard from stored records only (no training)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--group", help="candidate group (see `harness list groups`)")
        options.add_list(p, "--candidates", help="candidate names")
        options.add_list(p, "--tasks", help="task names (default: all)")
        options.add_tier(p)
        options.add_list(
            p,
            "--baselines",
            default=DEFAULT_BASELINES,
            help=f"candidates always included (default {DEFAULT_BASELINES}; '' for none)",
        )
        p.add_argument(
            "--bench", action="store_true", help="add throughput/numerics columns from bench records"
        )
        options.add_output(p, "write the leaderboard to this file instead of stdout")
        p.add_argument(
            "--sweep",
            action="append",
            metavar="KEY=V1,V2",
            help="each candidate with hyperparameter KEY as one variant per value, e.g. d_state=4,8,16 "
            "-> diagonal[d_state=4], ...; repeatable (the product)",
        )
        p.add_argument(
            "--no-snapshot",
            action="store_true",
            help="do not copy the committed records of this machine class (results/snapshots/) into the store",
        )
        _add_common(p)
        if name == "compare":
            p.add_argument(
                "--seeds",
                type=validate.int_at_least(1),
                help="number of seeds (default: the tier's, 3 at quick)",
            )
            options.add_list(
                p,
                "--lrs",
                type=validate.number_list(0.0, "learning rates"),
                metavar="LR,LR",
                help="learning rates (default: the tier's grid)",
            )
            p.add_argument(
                "--task-set",
                action="append",
                metavar="KEY=VALUE",
                help="override the task's config (one task only, e.g. --tasks s5 --task-set n_objects=3); "
                "the leaderboard then scores these runs, not the default config's",
            )
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
            options.add_device(p, what="the device to train on")
            p.add_argument("--force", action="store_true", help="rerun even if records exist")
            options.add_quiet(p)
            p.add_argument(
                "--jobs",
                type=validate.int_at_least(1),
                default=None,
                help="runs in parallel (default: one per CPU core; each run uses 1 thread); with --executor "
                "ray and no --address, the CPUs of the local Ray cluster",
            )
            _add_executor_flags(p)
            p.set_defaults(func=cmd_compare, on_interrupt="finished runs are stored and will be reused")
        else:
            p.add_argument(
                "--all-versions",
                action="store_true",
                help="also use records of older candidate/engine code (default: only what compare would reuse)",
            )
            p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser(
        "snapshot",
        help="merge the stored records of a selection into the committed snapshot (results/snapshots/)",
    )
    p.add_argument("--group", help="candidate group")
    options.add_list(p, "--candidates", help="candidate names")
    options.add_list(p, "--tasks", help="task names (default: all)")
    options.add_tier(p)
    options.add_list(
        p, "--baselines", default=DEFAULT_BASELINES, help=f"also included (default {DEFAULT_BASELINES})"
    )
    p.add_argument("--sweep", action="append", metavar="KEY=V1,V2", help="the swept variants too")
    options.add_output(p, "the snapshot file (default results/snapshots/<tier>-<machine class>.jsonl.gz)")
    options.add_results_dir(p)
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("check", help="conformance checks of candidates (built-in or plug-in)")
    p.add_argument("names", nargs="*", metavar="NAME", help="candidate names (separate words or A,B)")
    p.add_argument("--group", help="every candidate of this group")
    options.add_list(
        p,
        "--dtypes",
        default="bf16,fp16",
        help="low-precision dtypes to check: bf16, fp16 (default bf16,fp16)",
    )
    options.add_format(p, ["table", "json"])
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("show", help="one stored record, by run id (or a unique prefix)")
    p.add_argument("run_id", help="a run id (hex) or a unique prefix of one")
    options.add_results_dir(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "doctor",
        help="check every stored record; set aside (*.corrupt) and list what fails",
        description=(
            "Reads every record under RESULTS_DIR/runs through the record schema. A file that does not "
            "parse, has the wrong shape or does not match its name is renamed to <name>.corrupt (never "
            "deleted) and listed; `harness compare` redoes its run. Exit 1 when something was set aside."
        ),
    )
    options.add_results_dir(p)
    p.set_defaults(func=cmd_doctor)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Command families living in their own packages (benchmarks, history, gates, report). Their
    registration functions are light: each command imports its modules when it runs."""
    from harness.bench.cli import add_bench_commands
    from harness.gate.cli import add_gate_command
    from harness.history import add_history_commands
    from harness.report.cli import add_report_command

    add_bench_commands(sub)
    add_history_commands(sub)
    add_gate_command(sub)
    add_report_command(sub)


# -- the one error policy -------------------------------------------------------------------------
def _error(message: str, code: int) -> int:
    print(f"harness: error: {message}", file=sys.stderr)
    return code


def _failures() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the command failed" (not the user's input, not a bug). Those of
    modules not imported yet cannot have been raised, so they are looked up, not imported."""
    import subprocess

    types: list[type[BaseException]] = [CommandFailed, subprocess.TimeoutExpired]
    sweep = sys.modules.get("harness.sweep")
    if sweep is not None and hasattr(sweep, "WorkerDied"):
        types.append(sweep.WorkerDied)
    return tuple(types)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``harness`` command, any family, with the one error policy (``harness.errors``):
    0 ok; 1 something failed (a run, a record, a file, a regression); 2 a usage error (for gate,
    history and machine also any failure to run: their parsers set ``failure_exit=2``); 130
    interrupted.

    Errors are one line on stderr, never a traceback; an unexpected one (a bug) names its type and
    asks for ``HARNESS_TRACEBACK=1``, which shows the traceback."""
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse has printed the usage error (or the help): its code
            return e.code if isinstance(e.code, int) else 2
        from harness.allocator import tune_allocator

        tune_allocator()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        note = getattr(args, "on_interrupt", None)
        print(f"harness: interrupted{'; ' + note if note else ''}", file=sys.stderr)
        return 130
    except (RegistryError, UsageError, ValueError) as e:
        return _error(str(e), 2)
    except Exception as e:
        failed = getattr(args, "failure_exit", 1)
        if isinstance(e, _failures()):
            return _error(str(e), failed)
        if isinstance(e, OSError):
            where = f"{e.filename}: " if e.filename else ""
            return _error(f"{where}{e.strerror or e}", failed)
        if os.environ.get("HARNESS_TRACEBACK"):
            raise
        print(
            f"harness: internal error: {type(e).__name__}: {e} (a bug: please report it; HARNESS_TRACEBACK=1 "
            "shows where)",
            file=sys.stderr,
        )
        return failed


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
