"""Based (Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
tradeoff"): linear attention with a 2nd-order Taylor feature map plus short sliding-window softmax
attention.

- Global branch: ``phi(x) = [1, x~, x~ x~^T / sqrt(2)]`` (``x~ = x / d^(1/4)``), so
  ``phi(q) . phi(k) = 1 + u + u^2 / 2 ~ exp(u)``, ``u = q . k / sqrt(d)`` (kernels/feature_maps.py),
  normalised causal linear attention over it (kernels/taylor_attn.py: inside a chunk the kernel
  ``1 + u + u^2/2`` is evaluated from ``q k^T`` directly; the features carry the state across chunks).
  Queries and keys are projected to a small feature dimension (``feature_dim = 16`` per head, as in
  the paper), so the feature space is ``1 + 16 + 136 = 153`` wide (the symmetric half of ``x x^T``).
- Local branch: exact causal softmax attention over the last ``window = 16`` tokens (the paper uses
  64 at 2k context; 16 suits the quick tier's T ~ 64), with rotary positions; chunkwise banded form
  (kernels/sliding_window.py); its recurrent state is a ring buffer of the last ``window`` keys and
  values, constant in T.

Choices where the paper leaves them open for a single mixer: the paper interleaves these as separate
layers (with gated convolutions); here both branches run in every mixer on their own projections and
their outputs are summed before one output projection (so ``+gate`` gates the sum). No short
convolution. ``n_heads = 4`` for both branches; values ``d_model / n_heads`` per head.
State: ``[H, 153, d_v + 1]`` for the linear branch plus ``2 * H * window * d_v`` for the ring buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness import Mixer, register_candidate
from harness.kernels.feature_maps import rotary, taylor_dim
from harness.kernels.sliding_window import empty_state as window_state
from harness.kernels.sliding_window import sliding_window_attention
from harness.kernels.taylor_attn import taylor_linear_attention


@register_candidate(
    "based",
    groups=("attention",),
    reference="Arora et al. 2024, Based: Taylor linear attention + sliding-window softmax attention",
)
class Based(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        feature_dim: int = 16,
        window: int = 16,
        chunk_size: int = 64,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.feature_dim = n_heads, d_model // n_heads, feature_dim
        self.window, self.chunk_size, self.rope_base = window, chunk_size, rope_base
        hf = n_heads * feature_dim
        self.sizes = [hf, hf, d_model, d_model, d_model, d_model]  # linear q, k, v; window q, k, v
        self.in_proj = nn.Linear(d_model, sum(self.sizes), bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor, positions: Tensor):
        cd = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        H, P = self.n_heads, self.head_dim
        lq, lk, lv, wq, wk, wv = self.in_proj(x).to(cd).split(self.sizes, dim=-1)
        lead = x.shape[:-1]

        lq = lq.reshape(*lead, H, self.feature_dim)
        lk = lk.reshape(*lead, H, self.feature_dim)
        lv = lv.reshape(*lead, H, P)
        lv = torch.cat([lv, torch.ones_like(lv[..., :1])], dim=-1)  # the normaliser as a value column
        wq = rotary(wq.reshape(*lead, H, P), positions, self.rope_base)
        wk = rotary(wk.reshape(*lead, H, P), positions, self.rope_base)
        return lq, lk, lv, wq, wk, wv.reshape(*lead, H, P)

    def _combine(self, o_lin: Tensor, o_win: Tensor, x: Tensor) -> Tensor:
        num, den = o_lin[..., :-1], o_lin[..., -1:]  # den >= (number of tokens) / 2 > 0
        return self.readout((num / den + o_win).flatten(-2).to(x.dtype), x)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        lq, lk, lv, wq, wk, wv = self._project(x, positions)
        o_lin, _ = taylor_linear_attention(
            lq, lk, lv, impl="chunk", chunk_size=self.chunk_size, output_final_state=False
        )
        o_win, _ = sliding_window_attention(wq, wk, wv, self.window, impl="chunk")
        return self._combine(o_lin, o_win, x)

    def init_state(self, batch, device=None, dtype=None):
        """``(S [B, H, F, d_v + 1], (k_buf [B, H, W, d_v], v_buf, pos))``."""
        cd = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        H, P = self.n_heads, self.head_dim
        S = torch.zeros(batch, H, taylor_dim(self.feature_dim), P + 1, device=device, dtype=cd)
        return S, window_state(batch, H, self.window, P, P, device=device, dtype=cd)

    def step(self, x_t: Tensor, state):
        S, ring = state
        lq, lk, lv, wq, wk, wv = self._project(x_t[:, None], ring[2].reshape(1))
        o_lin, S = taylor_linear_attention(lq, lk, lv, initial_state=S, impl="recurrent")
        o_win, ring = sliding_window_attention(wq, wk, wv, self.window, initial_state=ring, impl="recurrent")
        return self._combine(o_lin, o_win, x_t[:, None])[:, 0], (S, ring)
