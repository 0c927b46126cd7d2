"""``harness bench throughput|numerics|scans``: the microbenchmark commands.

``add_bench_commands(subparsers)`` adds the ``bench`` command to the main CLI (``harness/cli.py``);
each sub-command sets ``func(args) -> exit code``. ``python -m harness.bench.cli throughput ...``
runs them standalone (``main(argv)``; a leading ``bench`` is optional). Examples::

    harness bench throughput --group transitions                 # CPU default grid, fp32
    harness bench throughput --candidates softmax,diagonal --seq-lens 256,1024 --format markdown
    harness bench throughput --group all --device cuda --dtypes float32,bfloat16
    harness bench numerics --group transitions --dtypes fp32,bf16 --seq-lens 64,256,1024
    harness bench scans --families dense --state-sizes 16,64 --seq-lens 1024

Finished measurements are stored under ``<results-dir>/runs/<kind>/`` and reused on the next run
unless ``--force``; the tables say which rows were reused. The progress bar (tqdm, with ETA) goes to
stderr; ``--quiet`` turns it off.

This module is light (the parser is built for every ``harness`` command): the measuring modules,
torch and pandas are imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import options, validate
from harness.options import add_list

if TYPE_CHECKING:
    from harness.results import RecordStore

_ints = validate.int_list(1, "integers >= 1")
_INTERRUPTED = "finished measurements are stored and will be reused"


def _names(text: str) -> list[str]:
    """Comma-separated names, stripped, each once."""
    return list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def _add_common(p: argparse.ArgumentParser) -> None:
    options.add_device(p, auto=True, what="the device to measure on")
    add_list(
        p,
        "--dtypes",
        type=_names,
        metavar="DTYPES",
        help="dtypes: float32, bfloat16, float16, float64 (or fp32, bf16, ...)",
    )
    add_list(p, "--seq-lens", type=_ints, metavar="T,T", help="sequence lengths")
    p.add_argument("--batch", type=validate.int_at_least(1), help="batch size (default: the command's)")
    p.add_argument(
        "--threads",
        type=validate.int_at_least(1),
        help="torch threads (default: 1 on CPU, torch's default on CUDA)",
    )
    options.add_format(p, options.BENCH_FORMATS)
    options.add_output(p, "write the table to this file instead of stdout")
    options.add_results_dir(p, "record store root")
    p.add_argument("--no-store", action="store_true", help="neither read nor write records")
    p.add_argument("--force", action="store_true", help="measure again even where a stored record exists")
    options.add_quiet(p)
    p.set_defaults(on_interrupt=_INTERRUPTED)


def _add_clock(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        help="CPU timing clock: the thread's CPU time (default with 1 thread: other jobs do not count) or wall",
    )


def _add_selection(p: argparse.ArgumentParser) -> None:
    add_list(p, "--candidates", "--candidate", dest="candidates", type=_names, help="candidate names")
    p.add_argument("--group", help="a registry group, or 'all'")
    p.add_argument("--d-model", type=validate.int_at_least(1), default=64, help="model width D (default 64)")
    add_list(
        p,
        "--impls",
        type=_names,
        metavar="IMPLS",
        help="implementations to run (default: see the command's help)",
    )


def add_bench_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench {throughput,numerics,scans}`` to an argparse sub-parser collection."""
    bench = subparsers.add_parser(
        "bench",
        help="microbenchmarks: throughput, numerics, scan algorithms",
        description="Microbenchmarks of candidates (throughput, numerics) and of scan algorithms (scans).",
    )
    bsub = bench.add_subparsers(dest="bench_command", metavar="{throughput,numerics,scans}")
    bsub.required = True

    p = bsub.add_parser(
        "throughput",
        help="fwd, fwd+bwd and decode-step time, tokens/s, peak memory, exponent in T",
        description=(
            "Time forward, forward+backward and the decode step over a grid of T. CPU default: B=1, "
            "D=64, T in 256,1024,4096,8192, fp32, 1 thread, the parallel implementation; CUDA: T up to "
            "65536, every implementation but 'recurrent', TFLOP/s and fraction of peak. A call over "
            "--time-cap seconds (measured or predicted from shorter T) is a skipped row."
        ),
    )
    _add_selection(p)
    _add_common(p)
    _add_clock(p)
    add_list(p, "--passes", type=_names, metavar="PASSES", help="passes, a subset of fwd, fwd_bwd, step")
    p.add_argument(
        "--time-cap", type=validate.positive_number, help="seconds per call (default 1 on CPU, 10 on CUDA)"
    )
    p.add_argument(
        "--min-run-time",
        type=validate.positive_number,
        help="seconds of timed calls per shape, over all rounds (default 0.3)",
    )
    p.add_argument(
        "--rounds",
        type=validate.int_at_least(1),
        help="timing rounds over the grid, samples pooled per row (default 24 on CPU, 1 on CUDA)",
    )
    p.add_argument(
        "--baseline", default="softmax", help="candidate measured alongside ('none' for no baseline)"
    )
    p.set_defaults(func=cmd_throughput)

    p = bsub.add_parser(
        "numerics",
        help="error of every implementation vs float64, and long-sequence stability",
        description=(
            "Output, final-state and input-gradient error of each implementation against the float64 "
            "recurrent form, per dtype and T; stability (finite output, bounded state) at --stability-len."
        ),
    )
    _add_selection(p)
    _add_common(p)
    p.add_argument(
        "--stability-len",
        type=validate.int_at_least(0),
        default=16384,
        help="T of the stability check (0: skip)",
    )
    add_list(
        p,
        "--stability-dtypes",
        type=_names,
        default=["float32"],
        metavar="DTYPES",
        help="dtypes of the stability check (default float32)",
    )
    p.add_argument(
        "--against",
        choices=("fla",),
        help="fla: each harness kernel against fla's op for the same map, at the same inputs (needs the "
        "fla extra; not stored; exit 1 when one disagrees)",
    )
    p.add_argument(
        "--time-cap",
        type=validate.positive_number,
        default=120.0,
        help="seconds per (candidate, T) before longer T's are skipped",
    )
    p.set_defaults(func=cmd_numerics)

    p = bsub.add_parser(
        "scans",
        help="one recurrence, many algorithms: dense scans, DPLR resolvent, DeltaNet chunk",
        description=(
            "Error (vs float64 sequential) and time of: sequential / Hillis-Steele (1986) / Blelloch (1990) "
            "/ chunkwise / cyclic reduction (Hockney 1965) for the dense linear recurrence h_t = A_t h_{t-1} "
            "+ b_t (the parallel-scan view of linear RNNs, Martin & Cundy 2018); the DPLR resolvent by the "
            "Woodbury identity vs a truncated Neumann series (S4's Cauchy-kernel resolvent, Gu et al. 2022); "
            "the DeltaNet chunk by the naive WY representation vs the block (SSD-style) form (Yang et al. "
            "2024, Dao & Gu 2024)."
        ),
    )
    _add_common(p)
    _add_clock(p)
    add_list(
        p,
        "--families",
        type=_names,
        metavar="FAMILIES",
        help="families, a subset of dense, resolvent, deltanet",
    )
    add_list(
        p, "--state-sizes", type=_ints, metavar="N,N", help="dense family: state sizes N (default 16,64)"
    )
    p.add_argument(
        "--chunk-size",
        type=validate.int_at_least(1),
        default=64,
        help="chunk length of chunked scans (default 64)",
    )
    add_list(
        p,
        "--neumann-ks",
        type=_ints,
        metavar="K,K",
        help="resolvent family: Neumann terms (default 1,2,4,8,16)",
    )
    p.add_argument(
        "--time-cap", type=validate.positive_number, default=2.0, help="seconds per call (default 2)"
    )
    p.add_argument(
        "--min-run-time",
        type=validate.positive_number,
        default=0.2,
        help="seconds of timed calls per shape (default 0.2)",
    )
    p.set_defaults(func=cmd_scans)
    return bench


# -- commands ----------------------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> RecordStore | None:
    """The record store (checked before anything is measured), or None with ``--no-store``; the
    ``--output`` file is checked here too."""
    from harness.results import RecordStore

    validate.check_output_file(args.output)
    if args.no_store:
        return None
    root = validate.check_results_dir(args.results_dir, write=True)
    return RecordStore(
        root, on_corrupt=lambda e: print(f"harness: warning: {e}; measured again", file=sys.stderr)
    )


def _selected(args: argparse.Namespace) -> list[str]:
    from harness.bench.common import resolve_candidates

    return resolve_candidates(args.candidates or [], args.group)


def _device(args: argparse.Namespace) -> str:
    """``--device`` checked on this machine; ``auto`` resolved."""
    return validate.check_device(args.device)


def _emit(args: argparse.Namespace, text: str) -> None:
    if args.output:
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
        except OSError:
            print(text)  # the measurements are not lost; the error says where it could not go
            raise
        print(f"written to {args.output}", file=sys.stderr)
    else:
        print(text)


def _summary(rows: Sequence[dict[str, Any]], seconds: float, what: str) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    reused = sum(1 for r in rows if r.get("reused"))
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{what}: {len(rows)} rows ({parts}; {reused} reused) in {seconds:.1f} s", file=sys.stderr)


def cmd_throughput(args: argparse.Namespace) -> int:
    from harness.bench import report
    from harness.bench.throughput import PASSES, ThroughputConfig, run_throughput

    names = _selected(args)
    device = _device(args)
    cfg = ThroughputConfig(
        device=device,
        dtypes=args.dtypes or (("float32", "bfloat16") if device.startswith("cuda") else ("float32",)),
        seq_lens=args.seq_lens,
        batch=args.batch or 1,
        d_model=args.d_model,
        passes=args.passes or PASSES,
        impls=args.impls,
        time_cap=args.time_cap,
        **({} if args.min_run_time is None else {"min_run_time": args.min_run_time}),
        rounds=args.rounds,
        threads=args.threads,
        clock=args.clock,
        baseline=None if args.baseline in ("", "none") else args.baseline,
        force=args.force,
        progress=not args.quiet,
    )
    t0 = time.perf_counter()
    rows = run_throughput(names, cfg, _store(args))
    _summary(rows, time.perf_counter() - t0, "throughput")
    _emit(args, report.render(report.throughput_table(rows), args.format, rows))
    return 1 if any(r.get("status") == "error" for r in rows) else 0


def cmd_against_fla(args: argparse.Namespace) -> int:
    """``bench numerics --against fla``."""
    import importlib.util

    from harness.bench import report
    from harness.bench.against_fla import AgainstConfig, run_against_fla, table

    if importlib.util.find_spec("fla") is None:
        raise validate.UsageError(
            "--against fla needs fla, which is not installed: pip install 'mixer-harness[fla]' (or: pip install fla-core)"
        )
    validate.check_output_file(args.output)
    kw: dict[str, Any] = {}
    if args.seq_lens:
        kw["seq_lens"] = args.seq_lens
    if args.dtypes:
        kw["dtypes"] = args.dtypes
    cfg = AgainstConfig(device=args.device, batch=args.batch or 2, **kw)
    t0 = time.perf_counter()
    rows = run_against_fla(cfg)
    _summary(rows, time.perf_counter() - t0, "numerics against fla")
    _emit(args, report.render(table(rows), args.format, rows))
    bad = [r for r in rows if r.get("status") != "ok"]
    for r in bad:
        print(
            f"{r['pair']} T={r['T']} {r.get('impl')}: {r.get('error') or 'fla and the harness disagree'}",
            file=sys.stderr,
        )
    return 1 if bad else 0


def cmd_numerics(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.bench import report
    from harness.bench.numerics import NumericsConfig, run_numerics

    if args.against == "fla":
        return cmd_against_fla(args)

    names = _selected(args)
    kw: dict[str, Any] = {}
    if args.dtypes:
        kw["dtypes"] = args.dtypes
    if args.seq_lens:
        kw["seq_lens"] = args.seq_lens
    cfg = NumericsConfig(
        device=_device(args),
        batch=args.batch or 2,
        d_model=args.d_model,
        impls=args.impls,
        stability_len=args.stability_len,
        stability_dtypes=args.stability_dtypes,
        time_cap=args.time_cap,
        threads=args.threads,
        force=args.force,
        progress=not args.quiet,
        **kw,
    )
    t0 = time.perf_counter()
    rows = run_numerics(names, cfg, _store(args))
    _summary(rows, time.perf_counter() - t0, "numerics")
    if args.format in ("json", "csv"):
        table = report.numerics_table(rows)
        stab = report.stability_table(rows)
        both = pd.concat([table.assign(check="error"), stab.assign(check="stability")], ignore_index=True)
        text = report.render(both, args.format, rows)
    else:
        text = report.render(report.numerics_table(rows), args.format)
        stab = report.stability_table(rows)
        if not stab.empty:
            text += "\n\nlong-sequence stability (parallel output, recurrent state)\n"
            text += report.render(stab, args.format)
    _emit(args, text)
    return 1 if any(r.get("status") == "error" for r in rows) else 0


def cmd_scans(args: argparse.Namespace) -> int:
    from harness.bench import report
    from harness.bench.scans import FAMILIES, ScansConfig, run_scans

    kw: dict[str, Any] = {}
    if args.dtypes:
        kw["dtypes"] = args.dtypes
    if args.state_sizes:
        kw["state_sizes"] = args.state_sizes
    if args.neumann_ks:
        kw["neumann_ks"] = args.neumann_ks
    cfg = ScansConfig(
        device=_device(args),
        families=args.families or FAMILIES,
        seq_lens=args.seq_lens,
        chunk_size=args.chunk_size,
        batch=args.batch or 1,
        time_cap=args.time_cap,
        min_run_time=args.min_run_time,
        threads=args.threads,
        clock=args.clock,
        force=args.force,
        progress=not args.quiet,
        **kw,
    )
    t0 = time.perf_counter()
    rows = run_scans(cfg, _store(args))
    _summary(rows, time.perf_counter() - t0, "scans")
    _emit(args, report.render_scans(rows, args.format))
    return 1 if any(r.get("status") == "error" for r in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.bench.cli throughput ...``: ``harness bench ...`` (a leading ``bench`` is
    optional), through the one CLI and its error policy (``harness.cli.main``)."""
    from harness.cli import main as harness_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "bench":
        argv = ["bench", *argv]
    return harness_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
