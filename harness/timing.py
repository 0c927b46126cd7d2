"""Timing: the one place where the harness measures how long a call takes.

Every timer of the project goes through here: ``harness bench`` (throughput and scans), the speed
samples of ``harness gate``, the clock of the asv suite (``benchmarks/``) and of the pytest-benchmark
tests. Only public APIs measure: ``torch.utils.benchmark.Timer`` on CPU, CUDA events (through
``triton.testing.do_bench`` when triton is installed) on CUDA.

Clocks. On CPU with one torch thread the clock is the calling thread's CPU time
(``time.thread_time``): every op, backward included, runs on the calling thread then, so its CPU
time is the work of the call, and the time other processes hold the core is left out (on a shared
2-core machine repeated medians agreed within a few percent where wall-clock medians moved by
20-50 %). Callers that cannot be sure the work stays on their thread check with
:func:`runs_on_calling_thread` first. With more threads, or when asked, the clock is wall time
(``time.perf_counter``). On CUDA a loop that times single calls waits for the queued work first
(:func:`benchmark_clock`).

CPU samples (:func:`time_cpu`). A sample is one public ``Timer`` call: a block of ``number`` calls
(sized so the samples fill ``min_run_time``) timed by ``Timer.timeit(number)``, or, for a block of
one call, by ``Timer.blocked_autorange(min_run_time=0)``; the per-call time is the block's time over
its length. Both public methods run untimed warm-up calls first: ``timeit`` runs
``max(number // 100, 2)``, ``blocked_autorange`` one (its block-size estimate, which stops at one
call when the minimum run time is zero). There is no public way to time a block without them (the
Timer's block primitive is private), so they are part of the method and callers do not warm up
before a sample; for calls of 0.1 s and more, where the harness used to skip the warm-up, one
untimed call per sample is the price of public APIs. ``blocked_autorange`` and
``adaptive_autorange`` with a real run time are not used: they choose the block size themselves in
powers of ten, which for 5-50 ms calls leaves one or two blocks in a short run, or overshoots a
small budget several times.

Speed probe (:func:`speed_probe`): a fixed small workload timed just before a row's samples; a row's
time divided by the probe's (``x_probe``) cancels most of a shared machine's drift in speed.

This module is a leaf: it imports only the standard library, numpy and torch (triton when present),
never another module of the harness. Code that measures another commit with that commit's packages
(the A/B gate's worker, the asv suite during a backfill) loads *this* tree's copy by path, so both
sides of a comparison are timed by the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

CLOCKS = ("cpu", "wall")


@dataclass
class Stats:
    """Per-call times in seconds: median and 20th / 80th percentiles over ``n`` samples."""

    median: float
    p20: float
    p80: float
    n: int
    method: str
    samples: tuple[float, ...] = ()  # the per-call times behind the quantiles (empty on CUDA)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "samples"}


def stats_from(times: Sequence[float], method: str) -> Stats:
    arr = np.asarray(times, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no timing samples")
    return Stats(
        median=float(np.median(arr)),
        p20=float(np.percentile(arr, 20)),
        p80=float(np.percentile(arr, 80)),
        n=int(arr.size),
        method=method,
        samples=tuple(float(t) for t in arr),
    )


# -- clocks ----------------------------------------------------------------------------------------


def default_clock(device: torch.device, threads: int) -> str:
    """``cpu`` (the measuring thread's CPU time) for single-threaded CPU runs, else ``wall``."""
    return "cpu" if device.type == "cpu" and threads == 1 else "wall"


def check_clock(clock: str, device: torch.device, threads: int) -> str:
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; allowed: {', '.join(CLOCKS)}")
    if clock == "cpu" and (device.type != "cpu" or threads != 1):
        raise ValueError(f"clock 'cpu' needs device cpu and 1 thread (got {device.type}, {threads} threads)")
    return clock


def clock_function(clock: str) -> Callable[[], float]:
    return time.thread_time if clock == "cpu" else time.perf_counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synced_wall_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def benchmark_clock(device: torch.device) -> Callable[[], float]:
    """The clock of a benchmark loop that runs single-threaded (asv's ``timer``, pytest-benchmark's):
    the thread's CPU time on CPU; on CUDA wall time read after the queued work finished, so a sample
    covers the kernels it launched."""
    return _synced_wall_clock if device.type == "cuda" else time.thread_time


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call (synchronised on CUDA): for warmup and the time-cap check."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def runs_on_calling_thread(fn: Callable[[], object]) -> tuple[bool, float, float]:
    """Run ``fn`` once; True if (nearly) all its CPU time was spent on this thread, so this thread's
    CPU time measures it. Also returns the call's wall time and thread CPU time."""
    p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
    fn()
    p1, t1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
    return (p1 - p0) <= 1.2 * (t1 - t0) + 1e-3, w1 - w0, t1 - t0


# -- CPU -------------------------------------------------------------------------------------------


def time_cpu(
    fn: Callable[[], object],
    threads: int,
    call_estimate: float,
    min_run_time: float = 0.2,
    min_samples: int = 5,
    max_run_time: float = 30.0,
    clock: str = "wall",
) -> Stats:
    """Median / p20 / p80 per-call time from samples timed by ``torch.utils.benchmark.Timer``.

    Each sample is one block of ``number`` calls, ``number`` chosen from ``call_estimate`` so that
    ``min_samples`` blocks fill ``min_run_time`` (one call when a call is longer than that); samples
    are taken until ``min_run_time`` of timed calls has passed and at least ``min_samples`` ran, or
    ``max_run_time`` (timed, or wall: the CPU clock may run far slower than wall time) has passed.
    Each sample's public Timer call warms up first (see the module docstring), so the caller does not.

    ``clock="cpu"`` times with ``time.thread_time`` instead of ``time.perf_counter``; callers check
    with :func:`runs_on_calling_thread` that the work runs on this thread.
    """
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, timer=clock_function(clock))
    share = min_run_time / max(min_samples, 1)
    number = max(1, round(share / max(call_estimate, 1e-9)))
    times: list[float] = []
    total = 0.0
    wall0 = time.perf_counter()
    with _torch_threads(threads):
        while (total < min_run_time or len(times) < min_samples) and total < max_run_time:
            if number == 1:
                m = timer.blocked_autorange(min_run_time=0.0)  # one untimed call, then one timed
            else:
                m = timer.timeit(number)  # max(number // 100, 2) untimed calls, then the block
            times.extend(m.times)
            total += sum(m.raw_times)
            if time.perf_counter() - wall0 > max_run_time:
                break
    name = "thread_time" if clock == "cpu" else "perf_counter"
    how = "blocked_autorange, blocks of 1" if number == 1 else f"timeit, blocks of {number}"
    return stats_from(times, f"torch.utils.benchmark.Timer({name}).{how}")


def fastest(fn: Callable[[], object], device: torch.device, reps: int, threads: int = 1) -> float:
    """The fastest per-call time of ``reps`` one-call samples on CPU (on the default clock: thread
    CPU time with one thread); on CUDA the median of ``time_cuda``. The gate's speed sample."""
    if device.type == "cuda":
        return time_cuda(fn).median
    clock = default_clock(device, threads)
    return min(time_cpu(fn, threads, 1.0, min_run_time=0.0, min_samples=reps, clock=clock).samples)


@contextmanager
def _torch_threads(threads: int):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


# -- speed probe -----------------------------------------------------------------------------------

PROBE_WINDOW_S = 0.004  # seconds of probe calls before each timed block of samples


def speed_probe() -> Callable[[], torch.Tensor]:
    """A fixed small CPU workload, about 0.8 ms on one core of this VM, in two parts like the rows
    it stands beside: 20 tiny elementwise ops on a 64-vector (bound by torch's per-op dispatch, as
    a decode step is) and a 1024x64 @ 64x64 matmul, tanh and cumsum (a 256 KB working set, as a
    sequence pass has). Timing it just before a row's samples says how fast the machine is at that
    moment: a shared VM's speed drifts by 10-30 % over seconds and minutes, and a row's time divided
    by the probe's (``x_probe``) cancels most of that drift. Chosen by measurement: over 30-second
    windows of a 5-minute run on this VM, the log of (row time / probe time) of eight rows varied
    with a standard deviation of 0.014-0.048, against 0.038-0.089 for the rows' own times; a
    256x64 matmul-only probe left 0.029-0.068 and a dispatch-only one 0.058-0.074."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(64, generator=gen)
    a = torch.randn(1024, 64, generator=gen)
    w = torch.randn(64, 64, generator=gen) / 8

    def probe() -> torch.Tensor:
        h = v
        for _ in range(20):
            h = torch.tanh(h * 0.5 + 0.1)
        return torch.cumsum(torch.tanh(a @ w), 0) / 32 + h

    return probe


def time_probe(probe: Callable[[], object], clock: str, window: float = PROBE_WINDOW_S) -> float:
    """Median seconds of one probe call over ``window`` seconds (at least 5 calls), after one
    warm-up call, on ``clock`` (read directly: a call is ~1 ms, the clock's own cost under 1 us)."""
    now = clock_function(clock)
    probe()
    times: list[float] = []
    start = now()
    while len(times) < 5 or now() - start < window:
        t0 = now()
        probe()
        times.append(now() - t0)
    return float(np.median(times))


# -- CUDA ------------------------------------------------------------------------------------------


def time_cuda(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] | None = None) -> Stats:
    """Quantiles of CUDA-event times with an L2 flush before each call."""
    try:
        from triton.testing import do_bench
    except Exception:  # triton missing or broken on this machine: events by hand
        return _time_cuda_events(fn, grad_to_none)
    p20, med, p80 = do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, quantiles=[0.2, 0.5, 0.8])
    # do_bench runs as many calls as fit in ``rep`` ms (at least one): its sample count is not exposed
    return Stats(median=med / 1e3, p20=p20 / 1e3, p80=p80 / 1e3, n=-1, method="triton.testing.do_bench")


def _time_cuda_events(fn: Callable[[], object], grad_to_none, reps: int = 30) -> Stats:
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        for t in grad_to_none or ():
            t.grad = None
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return stats_from(times, "cuda events + L2 flush")
