"""Second-Order KDA (seed proposal 059): Kimi Delta Attention whose delta-rule removal direction is
adapted by HLA's second-order key metric (trick 222).

Per head (``S [K, V]``, ``M [K, K]``)::

    M_t   = gamma_M M_{t-1} + k_t k_t^T                          running key covariance
    k~_t  = M_t k_t / ||M_t k_t||                                adapted removal direction
    S_t   = (I - beta_t k~_t k_t^T) diag(alpha_t) S_{t-1} + beta_t k_t v_t^T
    y_t   = out(S_t^T q_t)

KDA (``k~ = k``) erases the value stored along the current key; here what is read along ``k_t`` is
erased along ``k~_t``, which leans towards the directions that past keys have used most. Both
recurrences run chunkwise, no loop over time (kernels/generalized_delta.py, ``so_kda``): ``M_t k_t``
is decayed linear attention with queries, keys and values all ``k`` (a constant ``gamma_M^(t-s)``
matrix inside a chunk), and the delta rule with removal vectors ``(a, b) = (k~, k)`` and a
per-channel decay uses the UT transform per chunk.

Choices where the seed leaves them open: ``q`` and ``k`` are L2-normalised per head (as in
KDA / DeltaNet; with ``||k|| = 1``, ``k^T M k >= 1`` so ``||M k|| >= 1`` and the normalisation of ``k~``
is always safe); ``beta = sigmoid(W_beta x)``; the per-channel decay is
``alpha = exp(-max_decay_rate * sigmoid(W_a x + b_a))`` with rates at init spread over
[1e-3, 0.5] x ``max_decay_rate`` -- bounded so that a chunk's decay span
(``chunk_size * max_decay_rate = 32``) stays where the kernel's factorised (matmul) path is exact in
fp32; ``gamma_M = 0.99`` is a fixed hyperparameter. No short convolutions, output norm or output
gate (KDA has them; the gate is the ``+gate`` modifier). Key dimension 16 per head, value
``d_model / n_heads``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import Mixer, register_candidate
from harness.kernels.generalized_delta import so_kda


@register_candidate(
    "so-kda",
    groups=("attention",),
    reference="Kimi Delta Attention's gated delta rule (Kimi Team 2025) with a second-order key metric from Higher-order Linear Attention (Zhang, Qin & Gu 2025)",
)
class SecondOrderKDA(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_key: int = 16,
        chunk_size: int = 16,
        max_decay_rate: float = 2.0,
        metric_decay: float = 0.99,
    ) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if not 0 < metric_decay <= 1 or max_decay_rate <= 0:
            raise ValueError(
                f"need 0 < metric_decay <= 1 and max_decay_rate > 0, got {metric_decay}, {max_decay_rate}"
            )
        self.n_heads, self.d_key, self.head_dim = n_heads, d_key, d_model // n_heads
        self.chunk_size, self.max_decay_rate, self.metric_decay = chunk_size, max_decay_rate, metric_decay
        hk = n_heads * d_key
        self.sizes = [hk, hk, hk, n_heads, d_model]  # q, k, decay, beta, v
        self.in_proj = nn.Linear(d_model, sum(self.sizes), bias=False)
        rates = torch.logspace(-3, math.log10(0.5), hk)  # fraction of max_decay_rate
        self.decay_bias = nn.Parameter(torch.log(rates) - torch.log1p(-rates))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor):
        H, K = self.n_heads, self.d_key
        q, k, z, b, v = self.in_proj(x).split(self.sizes, dim=-1)
        lead = x.shape[:-1]
        q = F.normalize(q.reshape(*lead, H, K), dim=-1)
        k = F.normalize(k.reshape(*lead, H, K), dim=-1)
        g = (-self.max_decay_rate * torch.sigmoid(z + self.decay_bias)).reshape(*lead, H, K)
        return q, k, g, torch.sigmoid(b), v.reshape(*lead, H, self.head_dim)

    def _mix(self, x: Tensor, state, impl: str):
        q, k, g, beta, v = self._project(x)
        o, state = so_kda(q, k, v, beta, g, self.metric_decay, state, impl=impl, chunk_size=self.chunk_size)
        return self.readout(o.flatten(-2), x), state

    def forward(self, x: Tensor) -> Tensor:
        return self._mix(x, None, "chunk")[0]

    def init_state(self, batch, device=None, dtype=None):
        """``(M [B, H, K, K], S [B, H, K, V])``: the key covariance and the delta-rule memory."""
        H, K = self.n_heads, self.d_key
        M = torch.zeros(batch, H, K, K, device=device, dtype=dtype)
        return M, torch.zeros(batch, H, K, self.head_dim, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state):
        y, state = self._mix(x_t[:, None], state, "recurrent")
        return y[:, 0], state
