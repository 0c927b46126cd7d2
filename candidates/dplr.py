"""Input-dependent diagonal-plus-low-rank transitions, real and oscillatory (seed proposals 004, 011)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import register_candidate

from .dense import MaterialisedTransition, linear, work_dtype


def _inv_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _block_inv(m: Tensor) -> Tensor:
    """Closed-form inverse of ``[..., 2, 2]`` blocks."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]


def _block_apply(blocks: Tensor, x: Tensor) -> Tensor:
    """``blockdiag(blocks) @ x``: ``blocks [..., N/2, 2, 2]``, ``x [..., N, K]``, element-wise (a batched
    matmul of 2 x 2 blocks is dominated by per-matrix overhead)."""
    xs = x.unflatten(-2, (-1, 2))  # [..., N/2, 2, K]
    x0, x1 = xs[..., 0, :], xs[..., 1, :]
    m = blocks[..., None]  # [..., N/2, 2, 2, 1]
    y0 = m[..., 0, 0, :] * x0 + m[..., 0, 1, :] * x1
    y1 = m[..., 1, 0, :] * x0 + m[..., 1, 1, :] * x1
    return torch.stack([y0, y1], dim=-2).flatten(-3, -2)


def _add_block_diag(A: Tensor, blocks: Tensor) -> Tensor:
    """``A + blockdiag(blocks)`` (in place on ``A [..., N, N]``, which must be a fresh tensor)."""
    m = blocks.shape[-3]
    diag = A.view(*A.shape[:-2], m, 2, m, 2).diagonal(dim1=-4, dim2=-2)  # [..., 2, 2, m] view
    diag += blocks.movedim(-3, -1)
    return A


def _c_apply(X: Tensor, a: Tensor, r: int) -> Tensor:
    """``C X`` with ``C = -a J``, ``J = [[-I, I], [-I, 0]]`` (r x r blocks), without a matmul."""
    top, bot = X[..., :r, :], X[..., r:, :]
    return torch.cat([top - bot, top], dim=-2) * a


def _small_solve(K: Tensor, R: Tensor) -> Tensor:
    """``K^{-1} R`` for a batch of small ``K``: closed form for 1 x 1 and 2 x 2, LU otherwise."""
    if K.shape[-1] == 1:
        return R / K
    if K.shape[-1] == 2:
        return _block_inv(K) @ R
    return torch.linalg.solve(K, R)


@register_candidate(
    "dplr",
    groups=("transitions",),
    reference="S4's diagonal-plus-low-rank structure (Gu et al. 2022) made input-dependent, bilinear (Cayley) discretisation, resolvent by the Woodbury identity",
)
@register_candidate(
    "osc-dplr",
    groups=("transitions",),
    reference="Damped-oscillator diagonal (LinOSS-style frequency and damping, input-dependent) plus a low-rank term, bilinear discretisation, Woodbury resolvent",
    oscillatory=True,
)
class DPLRMixer(MaterialisedTransition):
    """``A_t = (I - a_t G_t)^{-1} (I + a_t G_t)`` (bilinear / Cayley, ``a_t = Delta_t / 2``) of an
    input-dependent continuous-time DPLR generator ``G_t = Lambda_t + Z_t J Z_t^T``.

    - ``Lambda_t`` (``dplr``): ``-diag(softplus(W x_t + c))``, a real decay per state dim.
      ``Lambda_t`` (``osc-dplr``): 2 x 2 damped-oscillator blocks ``-zeta w I + w sqrt(1 - zeta^2) J_2``
      (eigenvalues ``-zeta w +- i w sqrt(1 - zeta^2)``, the proposal's oscillatory parameterisation) with
      ``w = softplus(.)``, ``zeta = sigmoid(.)`` input-dependent; the state stays real.
    - ``Z_t = [U_t, V_t]`` (N x 2r, a projection of ``x_t``), ``J = [[-I, I], [-I, 0]]``: the low-rank
      part is ``-U U^T + (U V^T - V U^T)``, a negative semi-definite symmetric part plus a skew part.

    Stability (how ``||A_t|| < 1`` is kept): ``G_t + G_t^T = 2 Re(Lambda_t) - 2 U U^T`` is negative
    definite, so ``G_t`` is dissipative and its Cayley transform is a strict contraction,
    ``||A_t||_2 < 1``, for any input (the proposal's "stable by construction" via the bilinear map,
    extended from eigenvalues to the operator norm by making the low-rank part dissipative).

    The resolvent ``(I - a G)^{-1}`` is computed exactly by Woodbury (proposal 011 studies a
    truncated Neumann series; exact keeps parallel == recurrent): with ``D = I - a Lambda``
    (2 x 2 block-diagonal, closed-form inverse) and ``C = -a J``, ``A_t = 2 (D + Z C Z^T)^{-1} - I =
    (2 D^{-1} - I) - 2 D^{-1} Z K^{-1} C Z^T D^{-1}``, ``K = I + C Z^T D^{-1} Z`` (2r x 2r): again
    diagonal(-block) plus rank 2r. Parallel form: every ``A_t`` is materialised as an N x N matrix and
    the chunked dense scan runs on them (products of DPLR matrices are not DPLR of bounded rank);
    the recurrent step applies the DPLR form in O(N r P). Init: ``Delta`` per head log-spaced in
    [0.05, 0.5], decays softplus^-1 of [0.5, 4] (``dplr``), ``w`` log-uniform in [0.5, 3] and ``zeta``
    in [0.05, 0.3] (``osc-dplr``), low-rank projection scaled by 0.1 (the proposal's small P, Q).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        d_state: int = 16,
        chunk_size: int = 64,
        rank: int = 1,
        oscillatory: bool = False,
    ) -> None:
        super().__init__(d_model, n_heads, d_state, chunk_size)
        if d_state % 2:
            raise ValueError(f"d_state={d_state} must be even (2 x 2 diagonal blocks)")
        H, N = n_heads, d_state
        self.rank, self.oscillatory = rank, oscillatory
        self.dt_proj = nn.Linear(d_model, H)
        with torch.no_grad():
            self.dt_proj.weight.mul_(0.1)
            self.dt_proj.bias.copy_(_inv_softplus(torch.logspace(math.log10(0.05), math.log10(0.5), H)))
        if oscillatory:
            self.omega_proj = nn.Linear(d_model, H * N // 2)
            self.zeta_proj = nn.Linear(d_model, H * N // 2)
            with torch.no_grad():
                w0 = torch.exp(torch.empty(H * N // 2).uniform_(math.log(0.5), math.log(3.0)))
                self.omega_proj.bias.copy_(_inv_softplus(w0))
                z0 = torch.empty(H * N // 2).uniform_(0.05, 0.3)
                self.zeta_proj.bias.copy_(torch.log(z0 / (1 - z0)))
                self.omega_proj.weight.mul_(0.1)
                self.zeta_proj.weight.mul_(0.1)
        else:
            self.decay_proj = nn.Linear(d_model, H * N)
            with torch.no_grad():
                self.decay_proj.bias.copy_(_inv_softplus(torch.linspace(0.5, 4.0, N)).repeat(H))
                self.decay_proj.weight.mul_(0.1)
        self.z_proj = nn.Linear(d_model, H * N * 2 * rank, bias=False)
        with torch.no_grad():
            self.z_proj.weight.mul_(0.1)
        J = torch.zeros(2 * rank, 2 * rank)
        J[:rank, :rank] = -torch.eye(rank)
        J[:rank, rank:] = torch.eye(rank)
        J[rank:, :rank] = -torch.eye(rank)
        self.register_buffer("J", J, persistent=False)

    def factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``A = blockdiag(Lb) + U V``: ``Lb [B, H, T, N/2, 2, 2]``, ``U [.., N, 2r]``, ``V [.., 2r, N]``
        (head-major; ``x [B, T, D]`` in the work dtype)."""
        H, N, r = self.n_heads, self.d_state, self.rank
        a = (F.softplus(linear(x, self.dt_proj)) / 2).transpose(1, 2)[..., None]  # [B, H, T, 1]
        if self.oscillatory:
            w = F.softplus(linear(x, self.omega_proj)).unflatten(-1, (H, N // 2)).transpose(1, 2)
            zeta = torch.sigmoid(linear(x, self.zeta_proj)).unflatten(-1, (H, N // 2)).transpose(1, 2)
            c = 1 + a * zeta * w  # D = I - a Lambda = c I - s J_2, J_2 = [[0, -1], [1, 0]]
            s = a * w * torch.sqrt(1 - zeta.square())
            Dm = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)
        else:
            lam = F.softplus(linear(x, self.decay_proj)).unflatten(-1, (H, N)).transpose(1, 2)
            d = (1 + a * lam).unflatten(-1, (N // 2, 2))
            zero = torch.zeros_like(d[..., 0])
            Dm = torch.stack([torch.stack([d[..., 0], zero], -1), torch.stack([zero, d[..., 1]], -1)], -2)
        Dinv = _block_inv(Dm)  # [B, H, T, N/2, 2, 2]
        Z = linear(x, self.z_proj).unflatten(-1, (H, N, 2 * r)).transpose(1, 2) / math.sqrt(N)
        Y = _block_apply(Dinv, Z)  # D^{-1} Z   [.., N, 2r]
        W = _block_apply(Dinv.mT, Z)  # (Z^T D^{-1})^T
        ZtDZ = (W[..., :, :, None] * Z[..., :, None, :]).sum(-3)  # Z^T D^{-1} Z   [.., 2r, 2r]
        eye = torch.eye(2 * r, dtype=x.dtype, device=x.device)
        a2 = a[..., None]
        K = eye + _c_apply(ZtDZ, a2, r)  # C = -a J
        V = _small_solve(K, _c_apply(W.mT, a2, r))  # K^{-1} C Z^T D^{-1}
        eye2 = torch.eye(2, dtype=x.dtype, device=x.device)
        return 2 * Dinv - eye2, -2 * Y, V

    def construction_flops(self) -> float:
        """``U V`` (rank ``2r``) dominates: ``4 r N^2``; ``D^-1``, ``K`` and its solve are ``O(r N)``."""
        return 4 * self.rank * self.d_state**2 + 20 * self.rank * self.d_state

    def transitions(self, x: Tensor) -> Tensor:
        """Every ``A_t`` materialised: the same Woodbury algebra as ``factors`` (which the recurrent
        step uses), written for the parallel form's cost: ``D`` is a diagonal (``dplr``) or a scaled
        2 x 2 rotation per block (``osc-dplr``) applied in closed form, ``Z^T D^-1 Z`` one small
        batched product, the diagonal part added in place: ~10 ops on ``[.., N, 2r]`` tensors where
        the generic 2 x 2-block path takes ~60 (at the quick tier's sizes this is most of the step)."""
        xw = x.to(work_dtype(x))
        H, N, r = self.n_heads, self.d_state, self.rank
        a = (F.softplus(linear(xw, self.dt_proj)) / 2).transpose(1, 2)[..., None]  # [B, H, T, 1]
        Z = linear(xw, self.z_proj).unflatten(-1, (H, N, 2 * r)).transpose(1, 2) / math.sqrt(N)
        if self.oscillatory:
            w = F.softplus(linear(xw, self.omega_proj)).unflatten(-1, (H, N // 2)).transpose(1, 2)
            zeta = torch.sigmoid(linear(xw, self.zeta_proj)).unflatten(-1, (H, N // 2)).transpose(1, 2)
            c = 1 + a * zeta * w  # D = [[c, s], [-s, c]] per block, D^-1 = [[c, -s], [s, c]] / (c^2 + s^2)
            s = a * w * torch.sqrt(1 - zeta.square())
            det = c.square() + s.square()
            cd, sd = (c / det)[..., None], (s / det)[..., None]
            z0, z1 = Z.unflatten(-2, (N // 2, 2)).unbind(-2)  # [.., N/2, 2r]
            Y = torch.stack([cd * z0 - sd * z1, sd * z0 + cd * z1], -2).flatten(-3, -2)  # D^-1 Z
            W = torch.stack([cd * z0 + sd * z1, cd * z1 - sd * z0], -2).flatten(-3, -2)  # D^-T Z
        else:
            lam = F.softplus(linear(xw, self.decay_proj)).unflatten(-1, (H, N)).transpose(1, 2)
            dinv = 1 / (1 + a * lam)
            Y = W = dinv[..., None] * Z
        a2 = a[..., None]
        K = torch.eye(2 * r, dtype=xw.dtype, device=xw.device) + _c_apply(W.mT @ Z, a2, r)
        V = _small_solve(K, _c_apply(W.mT, a2, r))  # K^{-1} C Z^T D^{-1}
        A = (-2 * Y) @ V
        if self.oscillatory:  # + 2 D^-1 - I, block by block
            cd, sd = cd[..., 0], sd[..., 0]
            blocks = torch.stack(
                [torch.stack([2 * cd - 1, -2 * sd], -1), torch.stack([2 * sd, 2 * cd - 1], -1)], -2
            )
            return _add_block_diag(A, blocks)
        A.diagonal(dim1=-2, dim2=-1).add_(2 * dinv - 1)
        return A

    def apply_step(self, x_t: Tensor, h: Tensor) -> Tensor:
        xw = x_t.to(work_dtype(x_t))
        Lb, U, V = (f[:, :, 0] for f in self.factors(xw[:, None]))
        h = h.to(xw.dtype)
        return _block_apply(Lb, h) + U @ (V @ h)
