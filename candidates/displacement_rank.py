"""Cauchy-like (low displacement rank) transitions (seed proposal 022; recorded negative result)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness import register_candidate

from .dense import MaterialisedTransition, linear, work_dtype


@register_candidate(
    "displacement-rank",
    groups=("transitions",),
    reference="Cauchy-like transitions of low displacement rank (Kailath, Kung & Morf 1979; learned in Thomas et al. 2018, Learning compressed transforms with low displacement rank); kept as a recorded negative result",
)
class DisplacementRankMixer(MaterialisedTransition):
    """``A_t[i, j] = d_i delta_ij + sum_k G_ik H_jk / (s_i - s_j)`` (i != j): a Cauchy-like matrix of
    displacement rank ``alpha`` w.r.t. ``diag(s)``, with fixed Chebyshev nodes
    ``s_i = cos(pi (2i - 1) / 2N)`` and input-dependent ``d = sigmoid(W_d x_t)``, ``G, H = W_{G,H} x_t``
    (the proposal's parameterisation, ``alpha = 4`` as in its architecture table).

    The seed's experiment (022) found: ill-conditioned ``1 / (s_i - s_j)`` gradients (NaN without
    normalising the generators), Frobenius-normalised generators too constrained, a learned scale
    driven to ~0, no gain from alpha 4 over 1, and the Cauchy matvec 5x slower than dense at n = 16.
    It is implemented faithfully so the harness records that result, with the stability measures
    the seed used, combined so that they guarantee a contraction: the Cauchy part's rows are
    normalised (a row scaling of ``G`` keeps the displacement rank) and scaled by a learned
    ``sigmoid(gamma_h)`` times ``1 - d_i``: ``sum_j |A_ij| <= d_i + (1 - d_i) sigmoid(gamma) < 1``, so
    ``||A_t||_inf < 1``. Decays start log-spaced (``d = exp(-dt / tau)``, ``tau`` in [1, N]) as the
    proposal's S4-style init; ``gamma`` starts at 0.

    Parallel form: ``A_t`` is materialised (the Cauchy kernel times the rank-alpha outer product) and
    the chunked dense scan runs on it; products of Cauchy-like matrices have growing displacement
    rank (the proposal's truncation is lossy, so it is not used). Recurrent step: the structured
    matvec ``d * h + sum_k G_k * (Cauchy (H_k * h))`` in O(alpha N^2 P), as the seed's reference.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        displacement_rank: int = 4,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        H, N, a = n_heads, d_state, displacement_rank
        self.alpha, self.eps = a, eps
        i = torch.arange(1, N + 1, dtype=torch.float64)
        s = torch.cos(math.pi * (2 * i - 1) / (2 * N))
        diff = s[:, None] - s[None, :]
        cauchy = torch.where(torch.eye(N, dtype=torch.bool), 0.0, 1.0 / diff.masked_fill(diff == 0, 1.0))
        self.register_buffer("cauchy", cauchy.float(), persistent=False)
        self.register_buffer("cauchy64", cauchy, persistent=False)
        self.d_proj = nn.Linear(d_model, H * N)
        with torch.no_grad():
            tau = torch.logspace(0, math.log10(N), N)
            d0 = torch.exp(-1.0 / tau).clamp(max=0.99)
            self.d_proj.bias.copy_(torch.log(d0 / (1 - d0)).repeat(H))
            self.d_proj.weight.mul_(0.1)
        self.gh_proj = nn.Linear(d_model, 2 * H * N * a, bias=False)
        with torch.no_grad():
            self.gh_proj.weight.mul_(1 / math.sqrt(N * a))
        self.gamma = nn.Parameter(torch.zeros(H))

    def _cauchy(self, dtype: torch.dtype) -> Tensor:
        return (self.cauchy64 if dtype == torch.float64 else self.cauchy).to(dtype)

    def factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``d [B, H, T, N]``, row-scaled ``G [.., N, alpha]``, ``Hg [.., N, alpha]`` and the Cauchy
        part ``K [.., N, N]`` (head-major)."""
        H, N, a = self.n_heads, self.d_state, self.alpha
        d = torch.sigmoid(linear(x, self.d_proj)).unflatten(-1, (H, N)).transpose(1, 2)
        gh = linear(x, self.gh_proj).unflatten(-1, (2, H, N, a)).transpose(1, 3)  # [B, H, 2, T, N, a]
        G, Hg = gh[:, :, 0], gh[:, :, 1]
        K = (G @ Hg.mT) * self._cauchy(x.dtype)
        scale = (1 - d) * torch.sigmoid(self.gamma.to(x.dtype))[:, None, None] / (K.abs().sum(-1) + self.eps)
        return d, scale[..., None] * G, Hg, scale[..., None] * K

    def construction_flops(self) -> float:
        """``G H^T`` (``2 alpha N^2``), the Cauchy mask, the row norms and the scaling (``4 N^2``)."""
        return (2 * self.alpha + 4) * self.d_state**2

    def transitions(self, x: Tensor) -> Tensor:
        """``diag(d) + K``: the Cauchy kernel is zero on the diagonal, so ``d`` is written onto ``K``'s
        diagonal in place (no dense ``diag_embed`` and sum, two passes over every ``A_t`` fewer)."""
        d, _, _, K = self.factors(x.to(work_dtype(x)))
        K.diagonal(dim1=-2, dim2=-1).add_(d)
        return K

    def apply_step(self, x_t: Tensor, h: Tensor) -> Tensor:
        xw = x_t.to(work_dtype(x_t))
        d, G, Hg, _ = (f[:, :, 0] for f in self.factors(xw[:, None]))
        h = h.to(xw.dtype)
        u = Hg.mT[..., None] * h[..., None, :, :]  # [B, H, alpha, N, P]: H_k * h
        c = self._cauchy(xw.dtype) @ u  # Cauchy matvec per generator
        return d[..., None] * h + (G.mT[..., None] * c).sum(-3)
