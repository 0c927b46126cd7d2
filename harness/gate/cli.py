"""The ``harness gate`` command: arguments, the two forms (baseline, A/B), exit codes.

Light (the parser is built for every ``harness`` command): the measuring and judging modules are
imported when the gate runs. Errors go through ``harness.cli.main``'s one policy; the gate's parser
sets ``failure_exit=2``, so anything that keeps the gate from a verdict is exit 2, never 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import options, validate
from harness.gate import ERROR, PASS, GateError
from harness.gate.settings import CANDIDATES, TASKS, QualitySettings, SpeedSettings, Thresholds

DEFAULT_SAMPLES = 20
_DEFAULT_SPEED = SpeedSettings()


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _settings(args: argparse.Namespace, baseline: dict[str, Any] | None, device: str):
    """(candidates, tasks, speed settings, quality settings): the baseline's unless overridden."""
    candidates = _names(args.candidates) or (baseline or {}).get("candidates") or list(CANDIDATES)
    tasks = _names(args.tasks) or (baseline or {}).get("tasks") or list(TASKS)
    speed_kw = dict((baseline or {}).get("speed_settings") or {})
    speed_kw["device"] = device
    for key in ("batch", "seq_len", "d_model", "reps"):
        value = getattr(args, key, None)
        if value is not None:
            speed_kw[key] = value
    quality_kw = dict((baseline or {}).get("quality_settings") or {})
    if args.steps is not None:
        quality_kw["steps"] = args.steps
    return candidates, tasks, SpeedSettings(**speed_kw), QualitySettings(**quality_kw)


def _thresholds(args: argparse.Namespace) -> Thresholds:
    return Thresholds(factor=args.factor, alpha=args.alpha, tolerance=args.tolerance)


def cmd_gate(args: argparse.Namespace) -> int:
    from harness.environment import REPO_ROOT
    from harness.gate.ab import measure_ab
    from harness.gate.baseline import (
        base_speed_samples,
        baseline_path,
        check_comparable,
        load_baseline,
        make_baseline,
    )
    from harness.gate.render import GateResult, render
    from harness.gate.verdicts import judge_sides
    from harness.gate.worker import measure_here
    from harness.machine import detect
    from harness.results import atomic_write_json
    from harness.worktree import GitError, rev_parse

    t0 = time.perf_counter()
    info = detect(validate.check_device(args.device))
    machine = args.machine or info.name
    do_quality, do_speed = not args.skip_quality, not args.skip_speed
    results_dir = Path(args.results_dir)

    if args.base:
        if args.update_baseline:
            raise GateError("--update-baseline compares with a baseline file; it does not go with --base")
        candidates, tasks, speed, quality = _settings(args, None, info.device)
        try:
            base_sha = rev_parse(REPO_ROOT, args.base)
        except GitError as e:
            raise GateError(str(e)) from None
        base, new = measure_ab(
            args.base, candidates, tasks, speed, quality, args.samples, REPO_ROOT, do_quality, do_speed
        )
        q, s = judge_sides(base.quality, base.speed, new, _thresholds(args), base.speed_errors)
        title = f"gate: current tree vs {args.base} ({base_sha[:8]}) on {machine}, measured side by side"
        sides = {"base": base.identity, "current": new.identity}
        result = GateResult(q, s, time.perf_counter() - t0, title, sides)
        _emit(args, render(result, args.format, base_label=f"base {base_sha[:8]}"))
        return result.exit_code

    path = Path(args.baseline) if args.baseline else baseline_path(machine, results_dir)
    baseline = load_baseline(path) if path.exists() else None
    if baseline is None and not args.update_baseline:
        known = sorted(p.stem for p in (results_dir / "baselines").glob("*.json"))
        raise GateError(
            f"no baseline for machine class {machine!r} ({path}); known: {', '.join(known) or 'none'}. "
            "Create one with `harness gate --update-baseline`, or compare with a commit: `harness gate --base main`"
        )
    if baseline is not None and baseline.get("machine_class") not in (None, machine) and not args.baseline:
        raise GateError(f"{path} is for machine class {baseline.get('machine_class')!r}, not {machine!r}")
    candidates, tasks, speed, quality = _settings(args, baseline, info.device)
    if baseline is not None:
        try:
            check_comparable(baseline, speed, quality)
        except GateError:
            if not args.update_baseline:
                raise
            baseline = None  # replaced by one with other settings: nothing comparable to show
    new = measure_here(candidates, tasks, speed, quality, args.samples, do_quality, do_speed)
    result = None
    if baseline is not None:
        base_speed = base_speed_samples(baseline) if do_speed else {}
        base_quality = baseline.get("quality", {}) if do_quality else {}
        q, s = judge_sides(base_quality, base_speed, new, _thresholds(args), baseline.get("speed_errors"))
        title = (
            f"gate: current tree vs baseline {path} ({machine}, "
            f"baseline commit {str(baseline.get('git_commit'))[:8]})"
        )
        result = GateResult(q, s, time.perf_counter() - t0, title, {"current": new.identity})
        _emit(args, render(result, args.format))
    if args.update_baseline:
        if not (do_quality and do_speed):
            raise GateError("--update-baseline needs both quality and speed (no --skip-*)")
        atomic_write_json(path, make_baseline(machine, new, candidates, tasks, speed, quality))
        print(
            f"baseline written to {path} ({len(candidates)} candidates, {len(tasks)} task(s))",
            file=sys.stderr,
        )
        return PASS
    assert result is not None
    return result.exit_code


def _emit(args: argparse.Namespace, text: str) -> None:
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"gate report written to {args.output}", file=sys.stderr)
    print(text)


def add_threshold_options(p: argparse.ArgumentParser, tolerance: str) -> None:
    """``--factor``, ``--alpha``, ``--tolerance``: the judge's thresholds (gate, history compare)."""
    t = Thresholds()
    p.add_argument(
        "--factor",
        type=validate.positive_number,
        default=t.factor,
        help=f"the change of a time (ratio of medians) that counts (default {t.factor})",
    )
    p.add_argument(
        "--alpha",
        type=validate.positive_number,
        default=t.alpha,
        help=f"significance level of the Mann-Whitney U test on speed samples (default {t.alpha})",
    )
    p.add_argument(
        "--tolerance",
        type=validate.number_at_least(0.0),
        default=t.tolerance,
        help=f"{tolerance} (default {t.tolerance})",
    )


def add_gate_command(subparsers: Any) -> argparse.ArgumentParser:
    import harness.gate

    speed = _DEFAULT_SPEED
    p = subparsers.add_parser(
        "gate",
        help="regression gate: quality and speed vs a committed baseline or a base commit (exit 0/1/2)",
        description=(harness.gate.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--base", help="A/B: compare with this commit (checked out in a temporary worktree)")
    p.add_argument("--baseline", help="baseline file (default: results/baselines/<machine class>.json)")
    p.add_argument("--update-baseline", action="store_true", help="measure and write the baseline")
    options.add_list(
        p, "--candidates", help=f"candidate names (default: the baseline's, else {','.join(CANDIDATES)})"
    )
    options.add_list(p, "--tasks", help=f"quality tasks (default: the baseline's, else {','.join(TASKS)})")
    p.add_argument(
        "--samples",
        type=validate.int_at_least(1),
        default=DEFAULT_SAMPLES,
        help=f"speed samples per candidate (default {DEFAULT_SAMPLES})",
    )
    add_threshold_options(p, "allowed drop of a quality run's test accuracy")
    p.add_argument(
        "--steps",
        type=validate.int_at_least(1),
        help="training steps of the quality runs (changes the settings)",
    )
    for flag, dest, what in (
        ("--batch", "batch", "batch size"),
        ("--seq-len", "seq_len", "sequence length"),
        ("--d-model", "d_model", "model width"),
        ("--reps", "reps", "one-call repetitions per sample, the fastest counting"),
    ):
        p.add_argument(
            flag,
            dest=dest,
            type=validate.int_at_least(1),
            help=f"speed measurement: {what} (default: the baseline's, else {getattr(speed, dest)}; "
            "changes the settings)",
        )
    p.add_argument("--skip-quality", action="store_true", help="speed only")
    p.add_argument("--skip-speed", action="store_true", help="quality only")
    options.add_device(p, auto=True, index=False, what="the device of the speed measurement")
    p.add_argument("--machine", help="machine class name (default: the detected machine class)")
    options.add_results_dir(p, "where baselines/ lives")
    options.add_format(p, ["table", "markdown", "json"])
    options.add_output(p, "also write the report to this file")
    p.set_defaults(func=cmd_gate, failure_exit=ERROR)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.gate.cli ...``: ``harness gate ...`` through the one CLI (``harness.cli.main``)."""
    from harness.cli import main as harness_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "gate":
        argv = ["gate", *argv]
    return harness_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
