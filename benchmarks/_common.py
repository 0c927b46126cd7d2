"""Shared by the benchmark modules: device choice, the timer, thread setup."""

from __future__ import annotations

import os
import time

import torch

DEVICE_ENV = "HARNESS_ASV_DEVICE"  # auto (CUDA when available), cpu or cuda; set by `harness history`
CPU_THREADS = 1  # like training and the gate: results do not depend on the core count


def device() -> torch.device:
    want = os.environ.get(DEVICE_ENV, "auto")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def synced_timer() -> float:
    """asv's timer for the time_ benchmarks.

    CUDA: wall time after waiting for queued work, so a sample covers the kernels it launched.
    CPU: the process's CPU time. The CPU benchmarks are single-threaded, so on an idle machine this
    equals the wall time, and on a shared one it leaves out the time spent waiting for a core
    (wall-clock samples of 5-50 ms calls vary 2-4x on a loaded 2-core machine, CPU time ~10-20 %).
    """
    if _CUDA_TIMING:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


_CUDA_TIMING = device().type == "cuda"


def prepare(dev: torch.device) -> None:
    if dev.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
