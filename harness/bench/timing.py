"""Timing, peak memory, FLOP counting and the scaling-exponent fit shared by the benchmarks.

- CPU: ``torch.utils.benchmark.Timer`` (which sets the thread count), blocks of calls timed until
  ``min_run_time`` has passed and ``min_samples`` blocks ran; the per-call times of the blocks give
  the median and the 20th / 80th percentiles. With one thread the default clock is the thread's CPU
  time (``time.thread_time``), which does not count the time other processes hold the core; on this
  shared 2-core machine it made repeated medians agree within a few percent where wall-clock medians
  moved by 20-50 %. Wall time (``clock="wall"``) is used with more threads, or when asked.
- CUDA: ``triton.testing.do_bench`` (it clears a 256 MB buffer before each call, flushing L2, and
  reports quantiles of CUDA-event times); without triton, CUDA events around each call with the same
  flush done by hand.
- Peak memory, CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what
  was allocated before the call. CPU: the process's resident-set high-water mark (``VmHWM`` in
  ``/proc/self/status``), reset by writing ``5`` to ``/proc/self/clear_refs`` after ``malloc_trim``
  returns freed heap pages, minus the RSS before the call. This counts every allocation of the call
  (torch's CPU allocator is plain malloc), at page granularity, and is Linux-only; elsewhere the
  peak is reported as unavailable. ``tracemalloc`` would see none of torch's memory.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

CPU_MEMORY_METHOD = "rss-hwm-delta (/proc/self/clear_refs + VmHWM, after malloc_trim)"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated delta"

# Dense peak throughput in TFLOP/s by (device-name fragment, dtype), from the vendors' datasheets
# (SXM parts; no sparsity). fp32 is the CUDA-core rate: torch does not use TF32 for fp32 matmuls
# unless ``torch.backends.cuda.matmul.allow_tf32`` is set, in which case the tf32 rate applies.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4, "float64": 67.0},
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0, "float64": 51.2},
    "H100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4, "float64": 67.0},
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0, "float64": 19.5},
}


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


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call (synchronised on CUDA): for warmup and the time-cap check."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("cpu", "wall")


def default_clock(device: torch.device, threads: int) -> str:
    """``cpu`` (the measuring thread's CPU time) for single-threaded CPU runs, else ``wall``."""
    return "cpu" if device.type == "cpu" and threads == 1 else "wall"


def check_clock(clock: str, device: torch.device, threads: int) -> str:
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; allowed: {', '.join(CLOCKS)}")
    if clock == "cpu" and (device.type != "cpu" or threads != 1):
        raise ValueError(f"clock 'cpu' needs device cpu and 1 thread (got {device.type}, {threads} threads)")
    return clock


def runs_on_calling_thread(fn: Callable[[], object]) -> tuple[bool, float, float]:
    """Run ``fn`` once; True if (nearly) all its CPU time was spent on this thread, so this thread's
    CPU time measures it. Also returns the call's wall time and thread CPU time."""
    p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
    fn()
    p1, t1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
    return (p1 - p0) <= 1.2 * (t1 - t0) + 1e-3, w1 - w0, t1 - t0


def clock_function(clock: str) -> Callable[[], float]:
    return time.thread_time if clock == "cpu" else time.perf_counter


def time_cpu(
    fn: Callable[[], object],
    threads: int,
    call_estimate: float,
    min_run_time: float = 0.2,
    min_samples: int = 5,
    max_run_time: float = 30.0,
    clock: str = "wall",
) -> Stats:
    """Median / p20 / p80 per-call time from blocks timed by ``torch.utils.benchmark.Timer``.

    Blocks of ``number`` calls (about 1 ms or one call, whichever is longer, so the timer overhead is
    negligible; ``call_estimate`` should be a wall time) are timed until ``min_run_time`` has passed
    and at least ``min_samples`` blocks ran (or ``max_run_time``). ``blocked_autorange`` is not used
    because its block size grows in powers of ten, which for 5-50 ms calls leaves one or two blocks in
    a short run. Nor is ``Timer.timeit`` per block: it runs two untimed warm-up calls before every
    block, so a sample of a call longer than 1 ms cost three calls. Each block is the Timer's own
    block primitive (``_timeit``, what ``blocked_autorange`` times with); the caller warms up once.

    ``clock="cpu"`` times with ``time.thread_time`` (the calling thread's CPU time) instead of
    ``time.perf_counter``: on a shared machine wall time also counts the time other processes hold the
    core; with one torch thread every op (backward included) runs on the calling thread, so its CPU
    time is the work of the call. Callers check that with ``runs_on_calling_thread`` first.
    """
    from torch.utils.benchmark import Timer

    timer_fn = clock_function(clock)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, timer=timer_fn)
    number = max(1, round(1e-3 / max(call_estimate, 1e-9)))
    times: list[float] = []
    total = 0.0
    wall0 = time.perf_counter()
    time_block = _block_timer(timer)
    with _torch_threads(threads):
        while (total < min_run_time or len(times) < min_samples) and total < max_run_time:
            block = time_block(number)
            times.append(block / number)
            total += block
            if time.perf_counter() - wall0 > max_run_time:  # the CPU clock may run far slower than wall
                break
    name = "thread_time" if clock == "cpu" else "perf_counter"
    return stats_from(times, f"torch.utils.benchmark.Timer({name}).timeit, blocks of {number}")


def _block_timer(timer) -> Callable[[int], float]:
    """Seconds for one block of ``number`` calls, without ``Timer.timeit``'s per-block warm-up.
    Falls back to ``timeit`` (warm-up included) should a torch release drop the private method."""
    block = getattr(timer, "_timeit", None)
    if callable(block):
        return block
    return lambda number: timer.timeit(number).raw_times[0]


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
    warm-up call, on ``clock``."""
    now = clock_function(clock)
    probe()
    times: list[float] = []
    start = now()
    while len(times) < 5 or now() - start < window:
        t0 = now()
        probe()
        times.append(now() - t0)
    return float(np.median(times))


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


# -- peak memory ---------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(
    fn: Callable[[], object], device: torch.device, clock: str = "wall"
) -> tuple[int | None, str, float]:
    """Extra memory at the peak of one call of ``fn`` over what was in use before, the method, and
    the time of that call by ``clock`` (so the call also serves as a timed warmup)."""
    now = clock_function(clock)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = now()
        fn()
        torch.cuda.synchronize(device)
        seconds = now() - t0
        return max(0, torch.cuda.max_memory_allocated(device) - before), CUDA_MEMORY_METHOD, seconds
    _malloc_trim()
    hwm = _reset_hwm()
    before = _proc_status_kb("VmRSS")
    t0 = now()
    fn()
    seconds = now() - t0
    peak = _proc_status_kb("VmHWM")
    if not hwm:
        return None, "unavailable (no /proc/self/clear_refs)", seconds
    if before is None or peak is None:
        return None, "unavailable (no VmRSS/VmHWM)", seconds
    return max(0, peak - before) * 1024, CPU_MEMORY_METHOD, seconds


# -- FLOPs and peaks -----------------------------------------------------------------------------


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as counted by ``torch.utils.flop_counter`` (matmuls, convolutions,
    attention; elementwise work is not counted, so scans and elementwise recurrences undercount)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_tflops(device_name: str, dtype: torch.dtype) -> tuple[float | None, str | None]:
    """(peak TFLOP/s, table key) for a device name and compute dtype, or (None, None) if unknown."""
    key = str(dtype).replace("torch.", "")
    if key == "float32" and torch.backends.cuda.matmul.allow_tf32:
        key = "tf32"
    for fragment, table in PEAK_TFLOPS.items():  # more specific names first
        if fragment.lower() in device_name.lower():
            return table.get(key), f"{fragment}/{key}"
    return None, None


# -- scaling exponent ----------------------------------------------------------------------------


def fit_exponent(seq_lens: Sequence[float], times: Sequence[float]) -> float | None:
    """Least-squares slope of log(time) on log(T): time ~ T^slope. None with fewer than 2 distinct T."""
    pts = [(math.log(t), math.log(y)) for t, y in zip(seq_lens, times) if t > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope = np.polyfit(x, y, 1)[0]
    return float(slope)
