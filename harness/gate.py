"""``harness gate``: did this change make a candidate slower or worse? Exit 0 pass, 1 regression, 2 error.

Two forms:

- against a committed baseline (default): fresh measurements compared with
  ``results/baselines/<machine class>.json`` (``--update-baseline`` writes it, deliberately);
- A/B (``--base REF``): the base commit checked out in a temporary git worktree and measured with
  its own code in a subprocess, interleaved round by round with the current tree (also measured in
  a subprocess), on the same machine at the same time. No baseline file is needed, so this is the
  form for CI runners of unknown hardware.

Quality: deterministic short training runs (single-threaded CPU, fixed seeds) of a small fixed set
of candidates on one task. On the same machine class the accuracies repeat exactly; a candidate
fails when its test token accuracy drops by more than ``--tolerance`` (absolute; default 0.02,
room for a different CPU's or torch build's floating-point rounding), or when its run fails.

Speed: per candidate, samples of (forward+backward time) / (reference op time), the reference (a
fixed MLP) timed just before the candidate in the same process (see :mod:`harness.gate_worker`).
A candidate regresses only when BOTH its median ratio grew by more than ``--factor`` (default 1.3)
AND a one-sided Mann-Whitney U test says the new samples are larger with p < ``--alpha`` (default
0.01): the factor ignores small real changes and noise in the medians, the test ignores a shift of
the medians that the spread of the samples does not support — so a shared, noisy machine does not
make the gate flake, while a 1.5x slowdown of one candidate is caught.

The gated set is the baseline's (``--candidates`` / ``--tasks`` to choose another when updating it);
a candidate measured but absent from the baseline is reported as new, one in the baseline but no
longer registered is reported as missing; neither fails the gate.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu
from tabulate import tabulate

from harness import gate_worker as gw
from harness.environment import REPO_ROOT, environment
from harness.results import atomic_write_json, dumps_strict
from harness.worktree import GitError, checkout, pythonpath_env, rev_parse

BASELINE_SCHEMA = 1
DEFAULT_CANDIDATES = ("softmax", "linear-attention", "diagonal")
DEFAULT_TASKS = ("associative-recall",)
DEFAULT_SAMPLES = 20
DEFAULT_FACTOR = 1.3
DEFAULT_ALPHA = 0.01
DEFAULT_TOLERANCE = 0.02

PASS, REGRESSION, ERROR = 0, 1, 2


class GateError(Exception):
    """The gate could not run (no baseline, bad arguments, a worker died): exit code 2."""


# -- statistics ---------------------------------------------------------------------------------------
@dataclass
class SpeedVerdict:
    candidate: str
    base_median: float | None
    new_median: float | None
    change: float | None  # new / base median ratio
    p_value: float | None
    status: str  # ok | slower | faster | new | missing | failed

    @property
    def regression(self) -> bool:
        return self.status in ("slower", "failed")


def compare_speed(
    candidate: str,
    base: Sequence[float] | None,
    new: Sequence[float] | None,
    factor: float = DEFAULT_FACTOR,
    alpha: float = DEFAULT_ALPHA,
    error: str | None = None,
) -> SpeedVerdict:
    """Regression when the median grew by > ``factor`` and Mann-Whitney U (new > base) has p < alpha."""
    if error is not None:
        bm = float(np.median(base)) if base else None
        return SpeedVerdict(candidate, bm, None, None, None, "failed")
    if not base:
        nm = float(np.median(new)) if new else None
        return SpeedVerdict(candidate, None, nm, None, None, "new")
    if not new:
        return SpeedVerdict(candidate, float(np.median(base)), None, None, None, "missing")
    bm, nm = float(np.median(base)), float(np.median(new))
    change = nm / bm
    p_slower = float(mannwhitneyu(new, base, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(new, base, alternative="less").pvalue)
    if change > factor and p_slower < alpha:
        return SpeedVerdict(candidate, bm, nm, change, p_slower, "slower")
    if change < 1.0 / factor and p_faster < alpha:
        return SpeedVerdict(candidate, bm, nm, change, p_faster, "faster")
    return SpeedVerdict(candidate, bm, nm, change, p_slower, "ok")


@dataclass
class QualityVerdict:
    key: str  # candidate/task
    base_acc: float | None
    new_acc: float | None
    status: str  # ok | worse | better | new | missing | failed
    error: str | None = None

    @property
    def regression(self) -> bool:
        return self.status in ("worse", "failed")


def compare_quality(
    key: str, base: dict[str, Any] | None, new: dict[str, Any] | None, tolerance: float = DEFAULT_TOLERANCE
) -> QualityVerdict:
    base_acc = base.get("token_acc") if base and base.get("status") in ("ok", "diverged") else None
    if new is None:
        return QualityVerdict(key, base_acc, None, "missing")
    if new.get("status") not in ("ok", "diverged"):
        both = base is not None and base.get("status") not in ("ok", "diverged")
        return QualityVerdict(key, base_acc, None, "failed in both" if both else "failed", new.get("error"))
    new_acc = float(new["token_acc"])
    if base_acc is None:
        return QualityVerdict(key, None, new_acc, "new")
    drop = base_acc - new_acc
    if drop > tolerance:
        return QualityVerdict(key, base_acc, new_acc, "worse")
    if -drop > tolerance:
        return QualityVerdict(key, base_acc, new_acc, "better")
    return QualityVerdict(key, base_acc, new_acc, "ok")


# -- measurement --------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One side's measurements: quality results and speed samples (ratio per round) per candidate."""

    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    speed: dict[str, list[float]] = field(default_factory=dict)
    speed_errors: dict[str, str] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)


def measure_here(
    candidates: list[str],
    tasks: list[str],
    speed: gw.SpeedSettings,
    quality: gw.QualitySettings,
    samples: int,
    do_quality: bool = True,
    do_speed: bool = True,
) -> Measurement:
    """Both measurements in this process (the baseline form); fault injection read from the env."""
    m = Measurement(identity=gw.code_identity())
    if do_quality:
        lr_scale = gw.parse_injection(os.environ.get(gw.INJECT_LR_SCALE_ENV))
        m.quality = gw.quality_suite(candidates, tasks, quality, lr_scale)
    if do_speed:
        previous = __import__("torch").get_num_threads()
        try:
            slowdown = gw.parse_injection(os.environ.get(gw.INJECT_SLOWDOWN_ENV))
            session = gw.SpeedSession(list(candidates), speed, slowdown)
            m.speed_errors = dict(session.errors)
            m.speed = {n: [] for n in session.calls}
            for r in range(samples):
                for name, s in session.sample(r).items():
                    m.speed[name].append(s["ratio"])
        finally:
            __import__("torch").set_num_threads(previous)
    return m


class Worker:
    """A gate_worker subprocess speaking JSON lines (one side of an A/B comparison)."""

    def __init__(self, label: str, env: dict[str, str], cwd: Path) -> None:
        self.label = label
        code = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, gw.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the worker's stray output and tracebacks reach the user
            text=True,
            env=env,
            cwd=cwd,
            bufsize=1,
        )

    def send(self, **req: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise GateError(f"the {self.label} worker exited (code {self.proc.poll()})") from None

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise GateError(f"the {self.label} worker exited (code {self.proc.wait()}); see its output above")
        resp = json.loads(line)
        if not resp.get("ok"):
            raise GateError(
                f"the {self.label} worker failed: {resp.get('error')}\n{resp.get('traceback', '')}"
            )
        return resp

    def ask(self, **req: Any) -> dict[str, Any]:
        self.send(**req)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(timeout=10)
            except (GateError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()


def measure_ab(
    base_ref: str,
    candidates: list[str],
    tasks: list[str],
    speed: gw.SpeedSettings,
    quality: gw.QualitySettings,
    samples: int,
    repo: Path = REPO_ROOT,
    do_quality: bool = True,
    do_speed: bool = True,
) -> tuple[Measurement, Measurement]:
    """(base, current), each measured in its own worker; speed rounds interleaved A, B, B, A, ..."""
    with checkout(repo, base_ref) as co:
        base_env = pythonpath_env(co.import_root)
        for var in (gw.INJECT_SLOWDOWN_ENV, gw.INJECT_LR_SCALE_ENV):
            base_env.pop(var, None)  # faults are injected into the current side only
        workers = {
            # cwd: not the worktree root, whose harness/ folder would shadow the import root
            "base": Worker(f"base ({co.sha[:8]})", base_env, co.tree.parent),
            "current": Worker("current", dict(os.environ), Path.cwd()),
        }
        try:
            out = {k: Measurement(identity=w.ask(cmd="hello")) for k, w in workers.items()}
            if do_quality:  # deterministic whatever the load: both sides at once, one core each
                for w in workers.values():
                    w.send(cmd="quality", candidates=candidates, tasks=tasks, settings=quality.to_dict())
                for k, w in workers.items():
                    out[k].quality = w.receive()["results"]
            if do_speed:
                for k, w in workers.items():
                    errors = w.ask(cmd="speed_setup", names=candidates, settings=speed.to_dict())["errors"]
                    out[k].speed_errors = errors
                    out[k].speed = {n: [] for n in candidates if n not in errors}
                order = ["base", "current"]
                for r in range(samples):
                    for k in order if r % 2 == 0 else order[::-1]:
                        for name, s in workers[k].ask(cmd="speed_sample", rotation=r)["sample"].items():
                            out[k].speed[name].append(s["ratio"])
            return out["base"], out["current"]
        finally:
            for w in workers.values():
                w.close()


# -- baseline files -------------------------------------------------------------------------------------
def baseline_path(machine: str, results_dir: Path) -> Path:
    return results_dir / "baselines" / f"{machine}.json"


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GateError(f"cannot read baseline {path}: {e}") from e
    if data.get("schema") != BASELINE_SCHEMA:
        raise GateError(f"baseline {path} has schema {data.get('schema')!r}, expected {BASELINE_SCHEMA}")
    return data


def make_baseline(
    machine: str,
    m: Measurement,
    candidates: list[str],
    tasks: list[str],
    speed: gw.SpeedSettings,
    quality: gw.QualitySettings,
) -> dict[str, Any]:
    env = environment(speed.device)
    return {
        "schema": BASELINE_SCHEMA,
        "machine_class": machine,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": env.get("git_commit"),
        "git_dirty": env.get("git_dirty"),
        "environment": env,
        "candidates": list(candidates),
        "tasks": list(tasks),
        "speed_settings": speed.to_dict(),
        "quality_settings": quality.to_dict(),
        "quality": m.quality,
        "speed": {n: {"ratio_samples": v, "median_ratio": float(np.median(v))} for n, v in m.speed.items()},
        "speed_errors": m.speed_errors,
    }


# -- report ---------------------------------------------------------------------------------------------
@dataclass
class GateResult:
    quality: list[QualityVerdict]
    speed: list[SpeedVerdict]
    seconds: float
    title: str
    sides: dict[str, dict[str, Any]] = field(default_factory=dict)  # which code each side imported

    @property
    def regressions(self) -> list[str]:
        return [q.key for q in self.quality if q.regression] + [
            s.candidate for s in self.speed if s.regression
        ]

    @property
    def exit_code(self) -> int:
        return REGRESSION if self.regressions else PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "passed": not self.regressions,
            "regressions": self.regressions,
            "seconds": self.seconds,
            "quality": [vars(q) for q in self.quality],
            "speed": [vars(s) for s in self.speed],
            "sides": self.sides,
        }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(result: GateResult, fmt: str = "table", base_label: str = "baseline") -> str:
    if fmt == "json":
        return dumps_strict(result.to_dict(), indent=2)
    tablefmt = "github" if fmt == "markdown" else "simple"
    parts = [result.title, ""]
    if result.quality:
        rows = [
            [
                q.key,
                _fmt(q.base_acc, ".4f"),
                _fmt(q.new_acc, ".4f"),
                _fmt(None if q.base_acc is None or q.new_acc is None else q.new_acc - q.base_acc, "+.4f"),
                q.status.upper() if q.regression else q.status,
            ]
            for q in result.quality
        ]
        parts.append("quality (test token accuracy)")
        parts.append(
            tabulate(
                rows,
                headers=["candidate/task", base_label, "current", "change", "verdict"],
                tablefmt=tablefmt,
            )
        )
        for q in result.quality:
            if q.error:
                parts.append(f"  {q.key}: {q.error}")
        parts.append("")
    if result.speed:
        rows = [
            [
                s.candidate,
                _fmt(s.base_median, ".3f"),
                _fmt(s.new_median, ".3f"),
                _fmt(s.change, ".2f") + ("x" if s.change is not None else ""),
                _fmt(s.p_value, ".2g"),
                s.status.upper() if s.regression else s.status,
            ]
            for s in result.speed
        ]
        parts.append("speed (forward+backward time / reference op time, medians)")
        parts.append(
            tabulate(
                rows,
                headers=["candidate", base_label, "current", "change", "p", "verdict"],
                tablefmt=tablefmt,
                disable_numparse=True,
            )
        )
        parts.append("")
    verdict = (
        "PASS"
        if not result.regressions
        else f"FAIL: {len(result.regressions)} regression(s): " + ", ".join(result.regressions)
    )
    parts.append(f"gate: {verdict}  ({result.seconds:.0f} s)")
    return "\n".join(parts)


def judge(
    base_quality: dict[str, dict[str, Any]],
    base_speed: dict[str, list[float]],
    new: Measurement,
    factor: float,
    alpha: float,
    tolerance: float,
    base_speed_errors: dict[str, str] | None = None,
) -> tuple[list[QualityVerdict], list[SpeedVerdict]]:
    qkeys = list(dict.fromkeys([*base_quality, *new.quality]))
    quality = [compare_quality(k, base_quality.get(k), new.quality.get(k), tolerance) for k in qkeys]
    names = list(dict.fromkeys([*base_speed, *new.speed, *new.speed_errors]))
    speed = []
    for n in names:
        v = compare_speed(
            n, base_speed.get(n), new.speed.get(n), factor, alpha, error=new.speed_errors.get(n)
        )
        if v.status == "failed" and n in (base_speed_errors or {}):
            v.status = "failed in both"  # broken before this change too: not this change's regression
        speed.append(v)
    return quality, speed


# -- the command ---------------------------------------------------------------------------------------
def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _settings(args: argparse.Namespace, baseline: dict[str, Any] | None, device: str):
    """(candidates, tasks, speed settings, quality settings): the baseline's unless overridden."""
    candidates = _names(args.candidates) or (baseline or {}).get("candidates") or list(DEFAULT_CANDIDATES)
    tasks = _names(args.tasks) or (baseline or {}).get("tasks") or list(DEFAULT_TASKS)
    speed_kw = dict((baseline or {}).get("speed_settings") or {})
    speed_kw["device"] = device
    for key in ("batch", "seq_len", "d_model", "reps"):
        value = getattr(args, key, None)
        if value is not None:
            speed_kw[key] = value
    quality_kw = dict((baseline or {}).get("quality_settings") or {})
    if args.steps is not None:
        quality_kw["steps"] = args.steps
    return candidates, tasks, gw.SpeedSettings(**speed_kw), gw.QualitySettings(**quality_kw)


def _check_comparable(baseline: dict[str, Any], speed: gw.SpeedSettings, quality: gw.QualitySettings) -> None:
    if baseline.get("speed_settings") != speed.to_dict():
        raise GateError(
            f"the speed settings differ from the baseline's ({baseline.get('speed_settings')} vs "
            f"{speed.to_dict()}); measure with the baseline's, or --update-baseline"
        )
    if baseline.get("quality_settings") != quality.to_dict():
        raise GateError(
            f"the quality settings differ from the baseline's ({baseline.get('quality_settings')} vs "
            f"{quality.to_dict()}); measure with the baseline's, or --update-baseline"
        )


def cmd_gate(args: argparse.Namespace) -> int:
    from harness.machine import detect

    t0 = time.perf_counter()
    info = detect(args.device)
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
        q, s = judge(
            base.quality, base.speed, new, args.factor, args.alpha, args.tolerance, base.speed_errors
        )
        title = f"gate: current tree vs {args.base} ({base_sha[:8]}) on {machine}, measured side by side"
        result = GateResult(
            q, s, time.perf_counter() - t0, title, {"base": base.identity, "current": new.identity}
        )
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
            _check_comparable(baseline, speed, quality)
        except GateError:
            if not args.update_baseline:
                raise
            baseline = None  # replaced by one with other settings: nothing comparable to show
    new = measure_here(candidates, tasks, speed, quality, args.samples, do_quality, do_speed)
    if baseline is not None:
        base_speed = {n: v["ratio_samples"] for n, v in baseline.get("speed", {}).items()}
        if not do_speed:
            base_speed = {}
        base_quality = baseline.get("quality", {}) if do_quality else {}
        q, s = judge(
            base_quality,
            base_speed,
            new,
            args.factor,
            args.alpha,
            args.tolerance,
            baseline.get("speed_errors"),
        )
        title = f"gate: current tree vs baseline {path} ({machine}, baseline commit {str(baseline.get('git_commit'))[:8]})"
        result = GateResult(q, s, time.perf_counter() - t0, title, {"current": new.identity})
        _emit(args, render(result, args.format))
    else:
        result = None
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


def _guarded(fn):
    """Errors of the gate itself are exit code 2 with one line on stderr (never confused with 1)."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (GateError, GitError, ValueError, KeyError, OSError) as e:
            print(f"harness gate: error: {e}", file=sys.stderr)
            return ERROR

    return run


def add_gate_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "gate",
        help="regression gate: quality and speed vs a committed baseline or a base commit (exit 0/1/2)",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--base", help="A/B: compare with this commit (checked out in a temporary worktree)")
    p.add_argument("--baseline", help="baseline file (default: results/baselines/<machine class>.json)")
    p.add_argument("--update-baseline", action="store_true", help="measure and write the baseline")
    p.add_argument(
        "--candidates", help=f"comma-separated (default: the baseline's, else {','.join(DEFAULT_CANDIDATES)})"
    )
    p.add_argument(
        "--tasks",
        help=f"comma-separated quality tasks (default: the baseline's, else {','.join(DEFAULT_TASKS)})",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"speed samples per candidate (default {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "--factor",
        type=float,
        default=DEFAULT_FACTOR,
        help=f"slowdown that counts (default {DEFAULT_FACTOR})",
    )
    p.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help=f"significance level (default {DEFAULT_ALPHA})"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"allowed accuracy drop (default {DEFAULT_TOLERANCE})",
    )
    p.add_argument("--steps", type=int, help="training steps of the quality runs (changes the settings)")
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seq-len", dest="seq_len", type=int, help=argparse.SUPPRESS)
    p.add_argument("--d-model", dest="d_model", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--skip-quality", action="store_true", help="speed only")
    p.add_argument("--skip-speed", action="store_true", help="quality only")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="speed device (default cpu)"
    )
    p.add_argument("--machine", help="machine class (default: detected)")
    p.add_argument(
        "--results-dir", default="results", help="where results/baselines/ lives (default ./results)"
    )
    p.add_argument("--format", default="table", choices=["table", "markdown", "json"])
    p.add_argument("--output", help="also write the report to this file")
    p.set_defaults(func=_guarded(cmd_gate))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_gate_command(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
