"""Monarch-gated transitions (seed proposal 006)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness import register_candidate
from harness.kernels.monomial import monarch_apply, monarch_dense, stride_permutation

from .dense import MaterialisedTransition, linear, work_dtype


def cayley(W: Tensor) -> Tensor:
    """Orthogonal ``(I - S)^{-1} (I + S)`` of the skew-symmetric ``S = W - W^T`` (batched ``[..., b, b]``)."""
    S = W - W.mT
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    return torch.linalg.solve(eye - S, eye + S)


@register_candidate(
    "monarch",
    groups=("transitions",),
    reference="Monarch matrices (Dao et al. 2022) as input-dependent transitions: M(x_t) = P^T L(x_t) P R(x_t) with gated Cayley-orthogonal blocks",
)
class MonarchMixer(MaterialisedTransition):
    """``A_t = P^T L_t P R_t``: ``L_t = blockdiag(alpha_{t,i} L_i)``, ``R_t = blockdiag(beta_{t,i} R_i)``.

    As in the proposal: ``r = N / b`` blocks of size ``b`` (default ``b = 4 = sqrt(N)``), fixed
    orthogonal blocks ``L_i, R_i`` (Cayley transforms of learned skew-symmetric matrices, one set per
    head), input-dependent scalar gates ``alpha, beta = sigmoid(W x_t + c)`` in (0, 1) per block, and
    ``P`` the stride (reshape-transpose) permutation. Stability by construction:
    ``||A_t||_2 <= max alpha * max beta < 1``. Gate biases start at 3 (gates ~ 0.95).

    Products of Monarch matrices are not Monarch (generally dense), so the parallel form materialises
    each ``A_t`` and runs the chunked dense scan (``kernels.dense_scan``); materialising is cheap here
    because a per-block scalar commutes with its block: ``A_t = diag(P^T alpha_t) (P^T L P R)
    diag(beta_t)`` (one fixed Monarch matrix per head, scaled by rows and columns). The recurrent
    step applies the factors in O(N b P) (``kernels.monomial.monarch_apply``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        block_size: int = 4,
        gate_bias: float = 3.0,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        if d_state % block_size:
            raise ValueError(f"d_state={d_state} must be divisible by block_size={block_size}")
        H, b = n_heads, block_size
        self.block_size, self.n_blocks = b, d_state // b
        r = self.n_blocks
        self.L_skew = nn.Parameter(torch.randn(H, r, b, b) / math.sqrt(b))
        self.R_skew = nn.Parameter(torch.randn(H, r, b, b) / math.sqrt(b))
        self.gate_proj = nn.Linear(d_model, 2 * H * r)
        nn.init.constant_(self.gate_proj.bias, gate_bias)
        self.register_buffer("perm", stride_permutation(r, b), persistent=False)

    def blocks(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Orthogonal ``L, R [H, r, b, b]`` (Cayley needs a solve: float32 at least)."""
        solve_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        L = cayley(self.L_skew.to(solve_dtype)).to(dtype)
        R = cayley(self.R_skew.to(solve_dtype)).to(dtype)
        return L, R

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha, beta [B, T, H, r]``."""
        g = torch.sigmoid(linear(x, self.gate_proj)).unflatten(-1, (2, self.n_heads, self.n_blocks))
        return g[..., 0, :, :], g[..., 1, :, :]

    def construction_flops(self) -> float:
        """Row and column gates on the fixed Monarch matrix: ``2 N^2`` (the per-head ``P^T L P R`` is
        built once per call, not per token)."""
        return 2 * self.d_state**2

    def transitions(self, x: Tensor) -> Tensor:
        xw = x.to(work_dtype(x))
        L, R = self.blocks(xw.dtype)
        K = monarch_dense(L, R, self.perm)  # [H, N, N], fixed per head
        alpha, beta = self.gates(xw)
        b = self.block_size
        row = alpha.repeat_interleave(b, dim=-1)[..., self.perm]  # P^T (alpha x 1_b)
        col = beta.repeat_interleave(b, dim=-1)
        row, col = row.transpose(1, 2), col.transpose(1, 2)  # [B, H, T, N]
        return row[..., :, None] * K[:, None] * col[..., None, :]

    def apply_step(self, x_t: Tensor, h: Tensor) -> Tensor:
        xw = x_t.to(work_dtype(x_t))
        L, R = self.blocks(xw.dtype)
        alpha, beta = self.gates(xw)  # [B, H, r]
        return monarch_apply(alpha[..., None, None] * L, beta[..., None, None] * R, self.perm, h.to(xw.dtype))
