"""A stand-in for a third-party package: it registers a candidate and a task from outside the repo.

tests/test_plugins.py installs it through a real entry-point ``*.dist-info`` on sys.path.
"""

from __future__ import annotations

import torch
from torch import nn

from harness import Batch, Mixer, Task, register_candidate, register_task
from harness.task import IGNORE


@register_candidate("toy-ema", groups=("toy",), reference="test plug-in: exponential moving average")
class ToyEMA(Mixer):
    """y_t = W (a h_{t-1} + (1 - a) x_t): a fixed-decay EMA; the parallel form is a decay-weighted matmul."""

    def __init__(self, d_model: int, decay: float = 0.5) -> None:
        super().__init__(d_model)
        self.decay = decay
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        T = x.shape[1]
        t = torch.arange(T, device=x.device, dtype=x.dtype)
        diff = t[:, None] - t[None, :]
        w = torch.where(diff >= 0, (1 - self.decay) * self.decay ** diff.clamp_min(0), torch.zeros_like(diff))
        return self.proj(torch.einsum("ts,bsd->btd", w, x))

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, self.d_model, device=device, dtype=dtype)

    def step(self, x_t, state):
        state = self.decay * state + (1 - self.decay) * x_t
        return self.proj(state), state


@register_task("toy-last", reference="test plug-in: predict the previous token")
class ToyLast(Task):
    """Random tokens; the label at position t >= 1 is the token at t - 1 (one-step recall)."""

    from dataclasses import dataclass as _dc

    @_dc(frozen=True)
    class Config:
        vocab: int = 8
        length: int = 12

    TIERS = {"smoke": {"config": {}}, "quick": {"config": {}}, "full": {"config": {"length": 32}}}

    @property
    def vocab_size(self) -> int:
        return self.config.vocab

    @property
    def seq_len(self) -> int:
        return self.config.length

    def generate(self, n, generator, length=None):
        T = length or self.config.length
        x = torch.randint(0, self.config.vocab, (n, T), generator=generator)
        y = torch.full_like(x, IGNORE)
        y[:, 1:] = x[:, :-1]
        return Batch(x, y)
