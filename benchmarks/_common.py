"""Shared by the benchmark modules: device choice, a synchronising timer, thread setup."""

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
    """asv's timer for the time_ benchmarks: waits for queued CUDA work, so a sample covers it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def prepare(dev: torch.device) -> None:
    if dev.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
