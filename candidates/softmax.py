"""Causal softmax attention with rotary positions: the reference every leaderboard can include.

Parallel form: ``scaled_dot_product_attention(is_causal=True)``. Recurrent form: a KV cache that grows
by one key and one value per step, so its measured state is ``2 * T * d_model`` elements per layer.
Rotary embeddings (Su et al. 2021, RoFormer) on half-split pairs, base 10000.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import Mixer, register_candidate


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate ``x [B, H, T, Dh]`` by angle ``pos * base^(-2i/Dh)`` on (first half, second half) pairs."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, half]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1)


@register_candidate(
    "softmax",
    groups=("attention",),
    reference="Vaswani et al. 2017; rotary positions from Su et al. 2021",
)
class SoftmaxAttention(Mixer):
    def __init__(self, d_model: int, n_heads: int = 4, rope_base: float = 10000.0) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.rope_base = n_heads, d_model // n_heads, rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        return rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base), v

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._qkv(x, positions)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.readout(o.transpose(1, 2).flatten(-2), x)

    def init_state(self, batch, device=None, dtype=None):
        empty = torch.zeros(batch, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return (empty, empty.clone())

    def step(self, x_t: Tensor, state):
        k_cache, v_cache = state
        pos = torch.tensor([k_cache.shape[2]], device=x_t.device)
        q, k, v = self._qkv(x_t[:, None], pos)
        k_cache = torch.cat([k_cache, k], dim=2)
        v_cache = torch.cat([v_cache, v], dim=2)
        o = F.scaled_dot_product_attention(q, k_cache, v_cache)  # the new query sees the whole cache
        return self.readout(o.transpose(1, 2).flatten(-2), x_t[:, None])[:, 0], (k_cache, v_cache)
