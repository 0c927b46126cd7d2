"""A stand-in for a third-party package whose candidates fail the way real ones do in a sweep.

- ``fault-once``: the toy EMA, except that the first training step to find the file named by
  ``HARNESS_TEST_CRASH_FILE`` removes it and kills its own process with SIGKILL (what the kernel's
  OOM killer sends): exactly one run of a sweep dies, whichever worker takes it.
- ``toy-slow``: the toy EMA, sleeping ``HARNESS_TEST_SLOW_S`` seconds (default 0) per training
  forward pass, so that a test can act while runs are in flight.

tests/test_executors.py installs it through an entry point, as pip would.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from toy_mixer_plugin import ToyEMA

from harness import register_candidate


def _training(module) -> bool:
    return module.training and torch.is_grad_enabled()


@register_candidate("fault-once", groups=("fault",), reference="test plug-in: dies once by SIGKILL")
class FaultOnce(ToyEMA):
    def forward(self, x):
        path = os.environ.get("HARNESS_TEST_CRASH_FILE")
        if path and _training(self) and x.shape[0] > 2:  # a training batch, not a conformance check
            try:
                os.remove(path)  # only one process wins the file
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


@register_candidate("toy-slow", groups=("fault",), reference="test plug-in: a slow toy EMA")
class ToySlow(ToyEMA):
    def forward(self, x):
        if _training(self) and x.shape[0] > 2:
            time.sleep(float(os.environ.get("HARNESS_TEST_SLOW_S", "0")))
        return super().forward(x)
