"""What the benchmarks measure besides time (time itself: ``harness.timing``): peak memory, FLOPs
against the device's peak, and the scaling exponent of time in T.

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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from harness.timing import clock_function

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
