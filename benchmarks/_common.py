"""Shared by the benchmark modules: device choice, the timer, thread setup.

The timer is ``harness.timing``'s (the one timing module of the project), loaded by path from this
tree: during a backfill ``harness`` is an older commit's, which may not have it, and every commit
must be timed by the same code anyway.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

DEVICE_ENV = "HARNESS_ASV_DEVICE"  # auto (CUDA when available), cpu or cuda; set by `harness history`
CPU_THREADS = 1  # like training and the gate: results do not depend on the core count


def this_tree(module: str):
    """A leaf module of this tree's ``harness`` (``harness/<module>.py``, which imports no other
    module of the package), loaded by path whichever ``harness`` is installed."""
    name = f"_asv_this_tree_{module.replace('/', '_')}"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "harness" / f"{module}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before running it: dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


def device() -> torch.device:
    want = os.environ.get(DEVICE_ENV, "auto")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


timing = this_tree("timing")

#: asv's timer for the time_ benchmarks (``harness.timing.benchmark_clock``): the thread's CPU time
#: on CPU (the benchmarks run single-threaded), wall time after a synchronisation on CUDA.
synced_timer = timing.benchmark_clock(device())


def prepare(dev: torch.device) -> None:
    if dev.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
