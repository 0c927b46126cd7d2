"""A stand-in for a researcher's own package: one conforming mixer and three broken ones, registered
through the ``mixer_harness.candidates`` entry point (tests/test_check.py installs it)."""

from __future__ import annotations

import torch
from torch import nn

from harness import Mixer, register_candidate


class _EMA(Mixer):
    """``h_t = a h_{t-1} + (1 - a) W x_t``, ``y_t = readout(h_t)``: the parallel form is a matmul
    with the decay matrix."""

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(self, d_model: int, decay: float = 0.6) -> None:
        super().__init__(d_model)
        self.decay = decay
        self.proj = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def weights(self, T: int, dtype: torch.dtype) -> torch.Tensor:
        t = torch.arange(T, dtype=dtype)
        diff = t[:, None] - t[None, :]
        return torch.where(
            diff >= 0, (1 - self.decay) * self.decay ** diff.clamp_min(0), torch.zeros_like(diff)
        )

    def forward(self, x):
        return self.readout(torch.einsum("ts,bsd->btd", self.weights(x.shape[1], x.dtype), self.proj(x)), x)

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, self.d_model, device=device, dtype=dtype)

    def step(self, x_t, state):
        state = self.decay * state + (1 - self.decay) * self.proj(x_t)
        return self.readout(state, x_t), state


@register_candidate("ext-good", groups=("external",), reference="test package: a conforming EMA mixer")
class Good(_EMA):
    pass


@register_candidate("ext-peek", groups=("external",), reference="test package: reads the future")
class PeekAhead(_EMA):
    """Adds a suffix sum of the inputs: every output sees the whole sequence."""

    def forward(self, x):
        future = self.proj(x).flip(1).cumsum(1).flip(1)
        return super().forward(x) + 0.1 * future


@register_candidate("ext-badstep", groups=("external",), reference="test package: step decays differently")
class BadStep(_EMA):
    def step(self, x_t, state):
        state = 0.5 * self.decay * state + (1 - self.decay) * self.proj(x_t)
        return self.readout(state, x_t), state


@register_candidate("ext-nangrad", groups=("external",), reference="test package: NaN gradients")
class NaNGrad(_EMA):
    """Finite outputs, but sqrt at 0 has an infinite derivative: the backward pass is NaN."""

    def forward(self, x):
        return super().forward(x) + torch.sqrt(torch.zeros_like(x) * x)

    def step(self, x_t, state):
        y, state = super().step(x_t, state)
        return y + torch.sqrt(torch.zeros_like(x_t) * x_t), state
