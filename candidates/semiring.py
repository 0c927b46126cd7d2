"""Semiring group: scans over (logsumexp, +) and an annealed (max, +) (seed proposals 014 and 015).

``log-semiring`` (014). Per head and state dimension ``n`` the state holds a softmax-weighted summary
of the whole history::

    h_t[n] = sum_{s<=t} softmax_s(k_s[n] - sum_{r=s+1..t} rate_r[n]) v_s,      y_t = out(sum_n q_t[n] h_t[n])

i.e. ``N`` softmax attentions per head, each with its own learned score ``k[n]`` (computed from the
key token alone, so the "query" of each softmax is the fixed direction ``e_n``) and its own recency
decay; the token's own ``q_t`` then reads a mix of the ``N`` summaries. The recurrent state is the
online-softmax state: log-normaliser ``l [H, N]`` and normalised values ``h [H, N, P]``.
Choices where the seed is open: scores and decays are input dependent (Mamba-style selectivity);
the decay rate ``rate = max_decay_rate * sigmoid(W x + b)`` is bounded, and scores are soft-capped
``k = score_cap * tanh(k_raw / score_cap)`` (as Gemma 2 caps logits). Both bounds keep a chunk's
score range within 64, where kernels/semiring.py's fast path factors the in-chunk softmax weights
into a matmul (``2 * score_cap + chunk_size * max_decay_rate <= 64 / tau``); outside it the kernel
falls back to its exact pairwise path, correct but slower. Defaults: 4 heads, ``d_state = 16``,
``P = d_model / 4`` (the transitions group's state size), chunk 16.

``tropical`` (015). The same map with every score divided by a temperature ``tau``: softmax ->
argmax as ``tau -> 0``, i.e. ``tau * logsumexp(x / tau)`` -> ``max`` and the (max, +) scan
``m_t = max(m_{t-1} - rate_t, k_t)`` whose state carries the value at the argmax. ``tau`` is annealed
during training: the engine calls ``set_training_progress(frac)`` (frac in [0, 1]) and
``tau = tau_start * (tau_end / tau_start) ** frac`` (geometric, from the log semiring at
``tau_start = 1`` towards max); in eval mode ``tau = tau_end``. It stops at ``tau_end = 0.1`` rather
than 0 so gradients still reach the scores; the caps are tighter (``score_cap = 1``, so scores span
[-10, 10] at ``tau_end``; ``max_decay_rate = 0.25``) so the fast path holds at ``tau_end``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness import Mixer, register_candidate
from harness.kernels.semiring import empty_state, log_semiring_scan


@register_candidate(
    "log-semiring",
    groups=("semiring",),
    reference="A diagonal SSM scanned in the (logsumexp, +) semiring: an online-softmax state (the log-semiring view of attention, e.g. Katharopoulos et al. 2020 / Rabe & Staats 2021's online softmax)",
)
class LogSemiringMixer(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 16,
        score_cap: float = 10.0,
        max_decay_rate: float = 2.0,
    ) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if score_cap <= 0 or max_decay_rate <= 0:
            raise ValueError(f"score_cap and max_decay_rate must be > 0, got {score_cap}, {max_decay_rate}")
        self.n_heads, self.d_state, self.head_dim = n_heads, d_state, d_model // n_heads
        self.chunk_size, self.score_cap, self.max_decay_rate = chunk_size, score_cap, max_decay_rate
        hn = n_heads * d_state
        self.in_proj = nn.Linear(d_model, 3 * hn + d_model, bias=False)  # q, k, decay, v in one matmul
        # decay rates at init spread over [1e-3, 0.5] x max_decay_rate (long to short memories), as Mamba's dt
        rates = torch.logspace(-3, math.log10(0.5), hn)
        self.decay_bias = nn.Parameter(torch.log(rates) - torch.log1p(-rates))
        self.out = nn.Linear(d_model, d_model, bias=False)

    @property
    def tau(self) -> float:
        """Score temperature (1 for the log semiring)."""
        return 1.0

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        H, N = self.n_heads, self.d_state
        q, k, z, v = self.in_proj(x).split([H * N, H * N, H * N, self.d_model], dim=-1)
        k = self.score_cap * torch.tanh(k / self.score_cap)
        log_a = -self.max_decay_rate * torch.sigmoid(z + self.decay_bias)
        tau = self.tau
        shape = (*x.shape[:-1], H, N)
        return (
            q.reshape(shape),
            (k / tau).reshape(shape),
            v.reshape(*x.shape[:-1], H, self.head_dim),
            (log_a / tau).reshape(shape),
        )

    def forward(self, x: Tensor) -> Tensor:
        q, k, v, log_a = self._project(x)
        o, _ = log_semiring_scan(q, k, v, log_a, impl="chunk", chunk_size=self.chunk_size)
        return self.readout(o.flatten(-2), x)

    def init_state(self, batch, device=None, dtype=None):
        """``(l [B, H, N], h [B, H, N, P])``; ``l`` is in units of score / tau."""
        return empty_state(batch, self.n_heads, self.d_state, self.head_dim, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state):
        q, k, v, log_a = self._project(x_t[:, None])
        o, state = log_semiring_scan(q, k, v, log_a, initial_state=state, impl="recurrent")
        return self.readout(o[:, 0].flatten(-2), x_t), state


@register_candidate(
    "tropical",
    groups=("semiring",),
    reference="A diagonal SSM scanned in the tropical (max, +) semiring, annealed from tau * logsumexp(x / tau) to the hard max during training",
)
class TropicalMixer(LogSemiringMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 16,
        score_cap: float = 1.0,
        max_decay_rate: float = 0.25,
        tau_start: float = 1.0,
        tau_end: float = 0.1,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size, score_cap, max_decay_rate)
        if not 0 < tau_end <= tau_start:
            raise ValueError(f"need 0 < tau_end <= tau_start, got tau_start={tau_start}, tau_end={tau_end}")
        self.tau_start, self.tau_end = tau_start, tau_end
        self.progress = 0.0

    def set_training_progress(self, frac: float) -> None:
        """Called by the engine every step with the fraction of training done, in [0, 1]."""
        self.progress = min(max(float(frac), 0.0), 1.0)

    @property
    def tau(self) -> float:
        if not self.training:
            return self.tau_end
        return self.tau_start * (self.tau_end / self.tau_start) ** self.progress

    def extra_repr(self) -> str:
        return f"tau_start={self.tau_start}, tau_end={self.tau_end}, progress={self.progress:.3f}"


__all__ = ["LogSemiringMixer", "TropicalMixer"]
