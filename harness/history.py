"""``harness machine`` and ``harness history``: benchmark history with asv, per machine class.

- ``harness machine``: detect the hardware and write its entry to asv's machine file
  (``~/.asv-machine.json``) under a stable name per kind of hardware (``cpu-amd-epyc-2c``,
  ``h100-sxm-80g``).
- ``harness history record``: measure the checked-out commit (asv ``run`` in this interpreter's
  environment with ``--set-commit-hash`` and ``-m``), with asv's statistics: its sampling (the
  suite's ``rounds``, ``repeat`` and ``warmup_time``, set in ``benchmarks/bench_mixers.py`` to keep
  a full record of the CPU suite within its stated time budget) and the raw samples.
  ``--quick`` (one sample each, no interval) is a smoke check, not a record for the history.
- ``harness history backfill A..B``: each commit checked out in a temporary ``git worktree`` and
  measured with its own code; all results go to the one ``results/asv``.
- ``harness history publish``: the HTML report (``asv publish``); ``harness history serve``: serve it
  on 127.0.0.1 only.
- ``harness history compare A B``: every benchmark of B against A, judged by the gate's judge
  (:mod:`harness.gate.verdicts`: times by factor and Mann-Whitney U on asv's samples, the quality
  error rates by the gate's tolerance, single readings by the factor); exit 1 if anything regressed.

Exit codes: 0 ok, 1 a benchmark failed or got worse, 2 usage or setup error (``harness.cli.main``'s
one policy; these parsers set ``failure_exit=2``, so a failure to run is never read as a regression).

Light at import (the parser is built for every ``harness`` command): asv, the machine detection
(torch) and the judge (scipy) are imported when a command runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import options, validate
from harness.errors import CommandFailed, UsageError
from harness.gate.settings import Thresholds
from harness.worktree import checkout, git, is_dirty, rev_parse, revisions

if TYPE_CHECKING:
    import http.server

    from harness.asvtools import AsvProject
    from harness.gate.verdicts import Verdict

#: exit code of these commands when they cannot run (1 means a benchmark failed or got worse)
SETUP_FAILED = 2


class HistoryError(CommandFailed):
    """A usage or setup error: one line on stderr, exit code 2."""


def _project(args: argparse.Namespace) -> AsvProject:
    from harness.asvtools import AsvProject

    return AsvProject.find(args.config)


# -- machine ------------------------------------------------------------------------------------
def cmd_machine(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    project = _project(args)
    info = project.ensure_machine(validate.check_device(args.device), args.machine)
    entry = info.asv_entry()
    if args.machine:
        entry["machine"] = args.machine
    if args.format == "json":
        print(
            json.dumps({"name": entry["machine"], "asv_entry": entry, "detected": info.to_dict()}, indent=2)
        )
    else:
        print(tabulate(sorted(entry.items()), tablefmt="plain"))
        print(
            f"\nwritten to asv's machine file (~/.asv-machine.json); results go to "
            f"{project.results_dir / entry['machine']}",
            file=sys.stderr,
        )
    return 0


# -- record / backfill ----------------------------------------------------------------------------
def _bench_patterns(args: argparse.Namespace) -> list[str]:
    return [b for b in (args.bench or []) if b]


def _machine(project: AsvProject, args: argparse.Namespace) -> tuple[str, str]:
    info = project.ensure_machine(validate.check_device(args.device), args.machine)
    return (args.machine or info.name), info.device


def _outcome(proc, project: AsvProject, machine: str, sha: str) -> str:
    saved = project.result_files(machine, sha)
    if proc.returncode not in (0, 2) or not saved:
        return "error"
    return "ok" if proc.returncode == 0 else "some benchmarks failed"


def cmd_record(args: argparse.Namespace) -> int:
    project = _project(args)
    if is_dirty(project.repo) and not args.allow_dirty:
        raise UsageError(
            "the working tree has uncommitted changes to tracked files; results would be filed under "
            "HEAD without being HEAD's code. Commit or stash them, use `harness history backfill HEAD` "
            "(a clean worktree of HEAD), or pass --allow-dirty"
        )
    machine, device = _machine(project, args)
    sha = project.head()
    t0 = time.perf_counter()
    proc = project.run_benchmarks(
        sha, machine, _bench_patterns(args), quick=args.quick, device=device, timeout=args.timeout
    )
    outcome = _outcome(proc, project, machine, sha)
    print(
        f"harness history record: {sha[:8]} on {machine}: {outcome} "
        f"({time.perf_counter() - t0:.0f} s); results in {project.results_dir / machine}",
        file=sys.stderr,
    )
    return {"ok": 0, "some benchmarks failed": 1}.get(outcome, 2)


def cmd_backfill(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.asvtools import last_lines

    project = _project(args)
    shas = revisions(project.repo, args.range)
    machine, device = _machine(project, args)
    rows: list[list[Any]] = []
    worst = 0
    for sha in shas:
        subject = git(project.repo, "log", "-1", "--format=%s", sha)[:60]
        if args.skip_existing and project.result_files(machine, sha):
            rows.append([sha[:8], subject, "skipped (has results)", ""])
            continue
        t0 = time.perf_counter()
        with checkout(project.repo, sha) as co:
            print(f"harness history backfill: {sha[:8]} {subject}", file=sys.stderr, flush=True)
            proc = project.run_benchmarks(
                sha,
                machine,
                _bench_patterns(args),
                quick=args.quick,
                import_root=co.import_root,
                device=device,
                timeout=args.timeout,
            )
        outcome = _outcome(proc, project, machine, sha)
        worst = max(worst, {"ok": 0, "some benchmarks failed": 1}.get(outcome, 2))
        rows.append([sha[:8], subject, outcome, f"{time.perf_counter() - t0:.0f} s"])
    with checkout(project.repo, shas[-1]) as co:  # benchmarks.json: the newest measured commit's suite
        disc = project.discover(machine, import_root=co.import_root, capture=True)
    if disc.returncode != 0:
        print(
            f"warning: discovering the suite of {shas[-1][:8]} failed:\n{last_lines(disc.stdout)}",
            file=sys.stderr,
        )
        worst = max(worst, 2)
    print(tabulate(rows, headers=["commit", "subject", "outcome", "time"], tablefmt="simple"))
    print(f"results in {project.results_dir / machine}", file=sys.stderr)
    return worst


# -- publish / serve / compare ----------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    from harness.asvtools import last_lines, localize_report, prune_unmeasured

    project = _project(args)
    html = Path(args.html_dir) if args.html_dir else project.html_dir
    proc = project.publish(html, capture=True)
    if proc.returncode != 0 or not (html / "index.html").exists():
        print(last_lines(proc.stdout + proc.stderr), file=sys.stderr)
        raise HistoryError(f"asv publish failed (exit {proc.returncode})")
    gone = prune_unmeasured(html)
    if gone:
        print(f"{len(gone)} benchmark(s) without results left out of the report", file=sys.stderr)
    if not getattr(args, "cdn", False):
        left = localize_report(html)
        if left:
            print(f"warning: the report still loads {', '.join(left)} from the network", file=sys.stderr)
    print(f"report written to {html / 'index.html'} (serve it with `harness history serve`)", file=sys.stderr)
    return 0


@functools.cache
def _server_classes() -> tuple[type, type]:
    """The request handler and server classes (defined on first use: http.server is not imported
    by ``harness --help``)."""
    import http.server

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        requests: list[tuple[str, int]] | None = None  # (path, status) of every request, when given

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
            pass

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            if self.requests is not None:
                self.requests.append((self.path, int(code) if isinstance(code, int) else 0))

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            if isinstance(sys.exc_info()[1], ConnectionError):
                return  # a browser that closed the connection early (normal), not a server error
            super().handle_error(request, client_address)

    return QuietHandler, Server


def serve_directory(
    directory: Path, port: int = 0, requests: list[tuple[str, int]] | None = None
) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A threaded static file server for ``directory`` on 127.0.0.1 (never other interfaces).

    ``requests``: a list to which every request's (path, HTTP status) is appended.
    """
    quiet_handler, server_cls = _server_classes()
    handler_cls = type("Handler", (quiet_handler,), {"requests": requests})
    handler = functools.partial(handler_cls, directory=str(directory))
    server = server_cls(("127.0.0.1", port), handler)
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def serve_in_thread(
    directory: Path, port: int = 0, requests: list[tuple[str, int]] | None = None
) -> tuple[http.server.ThreadingHTTPServer, str]:
    server, url = serve_directory(directory, port, requests)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, url


def cmd_serve(args: argparse.Namespace) -> int:
    project = _project(args)
    html = Path(args.html_dir) if args.html_dir else project.html_dir
    if args.publish or not (html / "index.html").exists():
        cmd_publish(
            argparse.Namespace(config=args.config, html_dir=str(html), cdn=False)
        )  # raises on failure
    server, url = serve_directory(html, args.port)
    print(f"serving {html} at {url} (127.0.0.1 only; Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def compare_commits(
    project: AsvProject, rev1: str, rev2: str, machine: str, thresholds: Thresholds | None = None
) -> list[Verdict]:
    """The verdict on every benchmark recorded for ``rev2`` against ``rev1`` on ``machine`` (with the
    judge's default thresholds unless given)."""
    from harness.gate.verdicts import DEFAULTS, judge

    thresholds = thresholds or DEFAULTS

    shas = []
    for rev in (rev1, rev2):
        sha = rev_parse(project.repo, rev)
        if not project.result_files(machine, sha):
            raise HistoryError(f"no results for {rev} ({sha[:8]}) on {machine} in {project.results_dir}")
        shas.append(sha)
    before, after = (project.readings(machine, sha) for sha in shas)
    verdicts = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        r = a or b
        verdicts.append(
            judge(
                name,
                r.kind,
                b.values if b else None,
                a.values if a else None,
                thresholds,
                higher_is_better=r.higher_is_better,
                error=a.error if a else None,
                base_error=b.error if b else None,
            )
        )
    return verdicts


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    project = _project(args)
    machine = args.machine or project.ensure_machine(validate.check_device(args.device)).name
    thresholds = Thresholds(factor=args.factor, alpha=args.alpha, tolerance=args.tolerance)
    verdicts = compare_commits(project, args.rev1, args.rev2, machine, thresholds)
    shown = verdicts if args.all else [v for v in verdicts if v.status != "ok"]
    rows = [
        [
            v.key,
            _fmt(v.base),
            _fmt(v.new),
            "-" if v.change is None else (f"{v.change:+.3g}" if v.kind == "quality" else f"{v.change:.2f}x"),
            "-" if v.p_value is None else f"{v.p_value:.2g}",
            v.status.upper() if v.regression else v.status,
        ]
        for v in shown
    ]
    if rows:
        headers = ["benchmark", args.rev1, args.rev2, "change", "p", "verdict"]
        print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    worse = [v for v in verdicts if v.regression]
    verdict = f"{len(worse)} regression(s)" if worse else "no regressions"
    same = len(verdicts) - len(shown)
    print(
        f"\nharness history compare {args.rev1}..{args.rev2} on {machine}: {verdict} ({same} unchanged not shown)"
    )
    return 1 if worse else 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


# -- parser ---------------------------------------------------------------------------------------
def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="asv.conf.json (default: found from the working directory up)")
    p.set_defaults(failure_exit=SETUP_FAILED)


def _add_machine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machine", help="machine class name (default: the detected machine class)")
    options.add_device(p, default="auto", auto=True, index=False, what="the device benchmarks run on")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument(
        "--bench",
        "-b",
        action="append",
        metavar="REGEX",
        help="only benchmarks matching this regex (repeatable), e.g. 'bench_mixers\\.softmax\\.' or 'ErrorRate'",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one sample per benchmark, no interval: a smoke check, not a record for the history",
    )
    _add_machine(p)
    p.add_argument(
        "--timeout", type=validate.positive_number, default=None, help="seconds per asv run (default: none)"
    )


def add_history_commands(subparsers: Any) -> None:
    """Add ``machine`` and ``history`` to the ``harness`` command line."""
    from harness.gate.cli import add_threshold_options

    p = subparsers.add_parser("machine", help="detect this machine's class and write its asv machine entry")
    _add_config(p)
    _add_machine(p)
    p.add_argument("--name", dest="machine", help=argparse.SUPPRESS)  # the old name of --machine
    options.add_format(p, ["table", "json"])
    p.set_defaults(func=cmd_machine)

    h = subparsers.add_parser("history", help="asv benchmark history: record, backfill, publish, serve")
    hs = h.add_subparsers(dest="history_command", required=True, metavar="SUBCOMMAND")

    p = hs.add_parser("record", help="measure the checked-out commit")
    _add_run_options(p)
    p.add_argument("--allow-dirty", action="store_true", help="record even with uncommitted changes")
    p.set_defaults(func=cmd_record)

    p = hs.add_parser("backfill", help="measure each commit of a range (A..B), each in a temporary worktree")
    p.add_argument("range", help="A..B (oldest first), A^! or one commit")
    _add_run_options(p)
    p.add_argument("--skip-existing", action="store_true", help="skip commits that have results here")
    p.set_defaults(func=cmd_backfill)

    p = hs.add_parser("publish", help="write the HTML report (asv publish)")
    _add_config(p)
    p.add_argument("--html-dir", help="output folder (default: html_dir of asv.conf.json)")
    p.add_argument(
        "--cdn",
        action="store_true",
        help="keep asv's CDN links (default: a self-contained report with shipped copies, works offline)",
    )
    p.set_defaults(func=cmd_publish)

    p = hs.add_parser("serve", help="serve the HTML report on 127.0.0.1")
    _add_config(p)
    p.add_argument("--html-dir", help="folder to serve (default: html_dir of asv.conf.json)")
    p.add_argument(
        "--port", type=validate.int_at_least(0), default=8080, help="port (default 8080; 0 picks a free one)"
    )
    p.add_argument("--publish", action="store_true", help="publish first")
    p.set_defaults(func=cmd_serve)

    p = hs.add_parser(
        "compare", help="compare two recorded commits with the gate's judge; exit 1 if something regressed"
    )
    _add_config(p)
    p.add_argument("rev1", help="the reference commit")
    p.add_argument("rev2", help="the commit compared with it")
    add_threshold_options(p, "rise of an error rate that counts")
    p.add_argument("--all", action="store_true", help="also list the benchmarks that did not change")
    _add_machine(p)
    p.set_defaults(func=cmd_compare)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.history history ...`` (or ``machine ...``): through the one CLI and its
    error policy (``harness.cli.main``)."""
    from harness.cli import main as harness_main

    return harness_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
