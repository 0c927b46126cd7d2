"""A stand-in for a third-party package whose candidates import fine but crash when run.

``crash-raises`` raises in ``forward``; ``crash-segfault`` kills its process with a segmentation
fault in ``forward`` (a native-code bug). tests/test_bad_input.py runs them through the CLI.
"""

from __future__ import annotations

import ctypes
import os
import signal

import torch

from harness import Mixer, register_candidate


class _Linear(Mixer):
    def __init__(self, d_model: int) -> None:
        super().__init__(d_model)
        self.w = torch.nn.Linear(d_model, d_model)

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, 1, device=device, dtype=dtype)

    def step(self, x_t, state):
        return self(x_t[:, None])[:, 0], state


@register_candidate("crash-raises", groups=("crash",), reference="test plug-in: raises in forward")
class Raises(_Linear):
    def forward(self, x):
        raise RuntimeError("plug-in kernel exploded")


@register_candidate("crash-segfault", groups=("crash",), reference="test plug-in: segfaults in forward")
class Segfault(_Linear):
    def forward(self, x):
        ctypes.string_at(0)  # reads address 0: SIGSEGV
        os.kill(os.getpid(), signal.SIGSEGV)  # in case the read did not fault
        return self.w(x)
