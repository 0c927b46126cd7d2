"""Shared shell of the transitions group: one matrix-state linear recurrence per head.

Every candidate in group ``transitions`` is the same map up to the structure of ``A_t``::

    h_t = A_t h_{t-1} + k_t v_t^T        h_t in R^{N x P} per head
    y_t = h_t^T q_t                      (q_t, k_t in R^N, v_t in R^P: projections of x_t)

``A_t`` (N x N, input dependent) acts on the state dimension N and is shared across the P value
columns. Defaults are matched across the group — ``n_heads=4``, ``d_state=16``, ``P = d_model / n_heads``
— so the state is ``n_heads * d_state * P`` numbers per layer for every real-valued candidate and the
leaderboard compares structures, not sizes. Subclasses implement ``mix`` (parallel) and ``mix_step``
(recurrent) on the projected tensors; this class owns the projections, shapes and the state layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness import Mixer
from harness.kernels.cost import TokenCost


class TransitionMixer(Mixer):
    state_dtype_is_complex = False

    def __init__(self, d_model: int, n_heads: int = 4, d_state: int = 16, chunk_size: int = 64) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.d_state, self.head_dim, self.chunk_size = (
            n_heads,
            d_state,
            d_model // n_heads,
            chunk_size,
        )
        self.q_proj = nn.Linear(d_model, n_heads * d_state, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * d_state, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, T, D]`` -> ``q, k [B, T, H, N]``, ``v [B, T, H, P]``."""
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.d_state))
        k = self.k_proj(x).unflatten(-1, (self.n_heads, self.d_state))
        v = self.v_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        return q, k, v

    def algebra_cost(self) -> TokenCost | None:
        """Theoretical cost of one token, all heads, beyond the ``nn.Linear`` projections (which
        ``harness bench`` counts from the module): building ``A_t`` and the scan, from the kernels'
        ``token_cost``. None where a candidate does not declare it."""
        return None

    # -- to implement ---------------------------------------------------------------------------
    def mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Parallel form: ``o [B, T, H, P]`` from the whole sequence."""
        raise NotImplementedError

    def mix_step(self, x_t: Tensor, q: Tensor, k: Tensor, v: Tensor, state):
        """Recurrent form for one step: ``q, k [B, H, N]``, ``v [B, H, P]`` -> ``(o [B, H, P], state)``."""
        raise NotImplementedError

    # -- the Mixer contract ---------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x)
        return self.readout(self.mix(x, q, k, v).flatten(-2), x)

    def init_state(self, batch, device=None, dtype=None):
        if self.state_dtype_is_complex:
            dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return torch.zeros(batch, self.n_heads, self.d_state, self.head_dim, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state):
        q, k, v = (t[:, 0] for t in self.qkv(x_t[:, None]))
        o, state = self.mix_step(x_t, q, k, v, state)
        return self.readout(o.flatten(-2), x_t), state
