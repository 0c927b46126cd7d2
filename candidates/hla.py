"""Higher-order Linear Attention, second order, strictly causal (Zhang, Qin & Gu 2025,
arXiv:2510.27258; trick 222).

The paper's masked second-order output, normalised (its "normalized variant")::

    y_t = out( sum_{i<=j<=t} (q_t . k_i)(k_i . q_j) v_j  /  sum_{i<=j<=t} (q_t . k_i)(k_i . q_j) )

a data-adaptive degree-2 kernel: query ``t`` weighs token ``j`` by ``q_t^T S_j q_j`` with
``S_j = sum_{i<=j} k_i k_i^T`` the key second moment at ``j``. kernels/hla.py computes it from two
summaries (``S`` and the masked cross summary ``P = S C - G``, equivalent to the paper's five) as two
chained chunkwise linear attentions, and the denominator rides along as a value column of ones.

Choices where the paper leaves them open: ``q`` and ``k`` go through ``elu + 1`` (as in
``linear-attention``) so every weight ``(q_t . k_i)(k_i . q_j)`` is positive and the normaliser is
a positive sum (with raw ``q, k`` it can vanish or change sign, and the normalised output blows up);
the normaliser is floored at the smallest normal number instead of an additive eps; no decay (the
paper's base form) and no positional encoding; 4 heads of ``d_model / 4``. The unnormalised sums grow
like ``t^2``, so half-precision inputs are computed in float32. State per head: ``S [d, d]`` and
``P [d, d + 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import Mixer, register_candidate
from harness.kernels.hla import hla_second_order


@register_candidate(
    "hla",
    groups=("attention",),
    reference="Zhang, Qin & Gu 2025, Higher-order Linear Attention (masked second order, normalised)",
)
class HigherOrderLinearAttention(Mixer):
    def __init__(self, d_model: int, n_heads: int = 4, chunk_size: int = 64) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.chunk_size = n_heads, d_model // n_heads, chunk_size
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cd = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        q, k, v = self.qkv(x).to(cd).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        return F.elu(q) + 1.0, F.elu(k) + 1.0, torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)

    def _normalised(self, o: Tensor, x: Tensor) -> Tensor:
        num, den = o[..., :-1], o[..., -1:]
        return self.readout((num / den.clamp_min(torch.finfo(den.dtype).tiny)).flatten(-2).to(x.dtype), x)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._features(x)
        o, _ = hla_second_order(q, k, v, impl="chunk", chunk_size=self.chunk_size)
        return self._normalised(o, x)

    def init_state(self, batch, device=None, dtype=None):
        cd = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        d = self.head_dim
        S = torch.zeros(batch, self.n_heads, d, d, device=device, dtype=cd)
        return S, torch.zeros(batch, self.n_heads, d, d + 1, device=device, dtype=cd)

    def step(self, x_t: Tensor, state):
        q, k, v = self._features(x_t[:, None])
        o, state = hla_second_order(q, k, v, initial_state=state, impl="recurrent")
        return self._normalised(o, x_t[:, None])[:, 0], state
