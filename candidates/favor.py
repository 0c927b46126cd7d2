"""FAVOR+ linear attention (Choromanski et al. 2021, "Rethinking Attention with Performers") and its
circulant-projection variant (seed proposal 029).

Per head: ``phi(x) = exp(W x~ - |x~|^2 / 2) / sqrt(m)`` with ``x~ = x / d^(1/4)``, positive random
features whose inner products estimate the softmax kernel ``exp(q . k / sqrt(d))`` without bias;
causal linear attention over them (kernels/linear_attn.py), normalised by ``phi(q) . sum_s phi(k_s)``
(a value column of ones, as in ``linear-attention``). The feature maps are in kernels/feature_maps.py.

- ``favor+``: dense ``W [m, d]``, orthogonal random features (blocks of ``d`` orthogonal rows
  with chi(d) norms).
- ``circulant-favor+``: ``W`` = stacked blocks ``circ(c_b) diag(s)`` applied by real FFT,
  ``O(m log d)`` per token instead of ``O(m d)``; stored as ``c`` and ``s`` (``m + d`` numbers, not
  ``m d``). One sign diagonal shared by the blocks (the seed leaves it open): ``s * x`` is transformed
  once per token, and every row is still marginally N(0, I).

Choices where the sources leave them open: the projection is drawn once from ``feature_seed`` and kept
as a buffer (no redrawing: the Performer's periodic redraw would make runs depend on the step count),
shared by all heads of a layer; ``m = n_features = 32`` (Performer suggests ``m ~ d log d``, 44 for
d = 16; 64 costs ~3x softmax on the quick tier's CPU, 32 under 2x: ``--set n_features=64`` for more);
no positional encoding (like ``linear-attention``). The gated form is ``favor+ +gate`` written
``favor++gate`` (the registry splits a modifier at the last ``+``). Stabilisers: queries by their
per-token max, keys by the constant ``max_i |w_i|^2 / 2``, which bounds every key feature by 1 for
any input; both cancel in the normaliser, which is floored at the smallest normal number (no
additive eps, which would bias small-magnitude features). Half-precision inputs are computed in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness import Mixer, register_candidate
from harness.kernels.feature_maps import (
    circulant_params,
    circulant_project,
    favor_features,
    orthogonal_gaussian,
)
from harness.kernels.linear_attn import linear_attention

PROJECTIONS = ("dense", "circulant")


@register_candidate(
    "favor+",
    groups=("attention",),
    reference="Choromanski et al. 2021, Performer FAVOR+ (positive orthogonal random features)",
    projection="dense",
)
@register_candidate(
    "circulant-favor+",
    groups=("attention",),
    reference="FAVOR+ (Choromanski et al. 2021) with a circulant x random-sign projection applied by FFT instead of a dense orthogonal one (structured random features, Yu et al. 2016)",
    projection="circulant",
)
class FavorAttention(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        n_features: int = 32,
        projection: str = "dense",
        chunk_size: int = 64,
        feature_seed: int = 0,
    ) -> None:
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; allowed: {', '.join(PROJECTIONS)}")
        self.n_heads, self.head_dim, self.n_features = n_heads, d_model // n_heads, n_features
        self.projection, self.chunk_size = projection, chunk_size
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        gen = torch.Generator().manual_seed(feature_seed)
        d = self.head_dim
        if projection == "dense":
            w = orthogonal_gaussian(n_features, d, gen)
            self.register_buffer("proj", w.float())
            bound = w.square().sum(-1).max() / 2
        else:
            c, s = circulant_params(n_features, d, gen)
            self.register_buffer("circ_c", c.float())
            self.register_buffer("circ_s", s.float())
            bound = c.square().sum(-1).max() / 2  # every row of circ(c_b) diag(s) has norm |c_b|
        self.register_buffer("key_bound", bound.float())

    def _project(self, xs: Tensor) -> Tensor:
        if self.projection == "dense":
            return xs @ self.proj.to(xs.dtype).t()
        return circulant_project(xs, self.circ_c.to(xs.dtype), self.circ_s.to(xs.dtype), self.n_features)

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cd = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        q, k, v = self.qkv(x).to(cd).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        qks = torch.stack([q, k]) / self.head_dim**0.25  # one projection call for queries and keys
        wq, wk = self._project(qks).unbind(0)
        phi_q = favor_features(wq, qks[0], None)
        phi_k = favor_features(wk, qks[1], self.key_bound.to(cd))
        return phi_q, phi_k, torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)

    def _normalised(self, o: Tensor, x: Tensor) -> Tensor:
        num, den = o[..., :-1], o[..., -1:]
        return self.readout((num / den.clamp_min(torch.finfo(den.dtype).tiny)).flatten(-2).to(x.dtype), x)

    def forward(self, x: Tensor) -> Tensor:
        phi_q, phi_k, v = self._features(x)
        o, _ = linear_attention(phi_q, phi_k, v, impl="chunk", chunk_size=self.chunk_size)
        return self._normalised(o, x)

    def init_state(self, batch, device=None, dtype=None):
        """``[B, H, m, d + 1]``: the feature-space KV sum and, in the last column, the normaliser."""
        cd = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        return torch.zeros(batch, self.n_heads, self.n_features, self.head_dim + 1, device=device, dtype=cd)

    def step(self, x_t: Tensor, state: Tensor):
        phi_q, phi_k, v = self._features(x_t[:, None])
        o, state = linear_attention(phi_q, phi_k, v, initial_state=state, impl="recurrent")
        return self._normalised(o, x_t[:, None])[:, 0], state
