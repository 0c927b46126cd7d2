"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

``phi(x) = elu(x) + 1`` keeps features positive so the normaliser ``phi(q)^T sum_s phi(k_s)`` is
positive. The normaliser rides along as an extra value column of ones, so one kernel call computes
numerator and denominator. State: ``[H, Dk, Dv + 1]`` per sequence, constant in T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import Mixer, register_candidate
from harness.kernels.linear_attn import linear_attention


def elu_feature_map(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


@register_candidate(
    "linear-attention",
    groups=("attention",),
    reference="Katharopoulos et al. 2020, Transformers are RNNs (elu+1 feature map)",
)
class LinearAttention(Mixer):
    def __init__(self, d_model: int, n_heads: int = 4, chunk_size: int = 64, eps: float = 1e-6) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.chunk_size, self.eps = n_heads, d_model // n_heads, chunk_size, eps
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        ones = torch.ones_like(v[..., :1])
        return elu_feature_map(q), elu_feature_map(k), torch.cat([v, ones], dim=-1)

    def _normalised(self, o: Tensor, x: Tensor) -> Tensor:
        num, den = o[..., :-1], o[..., -1:]
        return self.readout((num / (den + self.eps)).flatten(-2), x)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._features(x)
        o, _ = linear_attention(q, k, v, impl="chunk", chunk_size=self.chunk_size)
        return self._normalised(o, x)

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, self.n_heads, self.head_dim, self.head_dim + 1, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: Tensor):
        q, k, v = self._features(x_t[:, None])
        o, state = linear_attention(q, k, v, initial_state=state, impl="recurrent")
        return self._normalised(o, x_t[:, None])[:, 0], state
