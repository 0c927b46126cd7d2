"""Resolvent of a diagonal-plus-low-rank (DPLR) matrix: Woodbury vs truncated Neumann (seed 011).

A DPLR SSM (S4's NPLR form) has ``A = diag(lam) + P Q^H`` with ``P, Q`` of rank ``r << N``. The
bilinear discretisation with a per-token step ``delta_t`` needs, at every token, the resolvent solve

    y_t = (I - (delta_t / 2) A)^{-1} x_t = (D_t - U_t Q^H)^{-1} x_t,
    D_t = 1 - (delta_t / 2) lam  (diagonal),  U_t = (delta_t / 2) P.

``impl=``:

- ``"dense"``: build the N x N matrix and ``torch.linalg.solve``: the reference, O(N^3) per token.
- ``"woodbury"``: exact, O(N r + r^3): ``D^-1 x + D^-1 U (I_r - K)^-1 Q^H D^-1 x``, ``K = Q^H D^-1 U``.
- ``"neumann"``: the truncated series ``sum_{j=0..k} (D^-1 U Q^H)^j D^-1 x``, computed as ``k``
  fixed-point iterations ``y <- D^-1 (x + U (Q^H y))`` from ``y = D^-1 x``: O(k N r), no inverse.
  It converges only when the spectral radius ``rho(K) < 1``; its error after ``k`` terms is about
  ``rho(K)^(k+1)``. ``neumann_radius`` reports ``rho(K)`` so a benchmark can show when the seed's
  claim (< 1e-3 relative error at k = 8) holds: it needs ``rho(K)`` below about 0.46.

Layout: ``lam [H, N]``, ``P, Q [H, N, r]``, ``delta [B, T, H]``, ``x [B, T, H, N]``; real or complex.
The op has no recurrence, so ``final_state`` is ``None``; the ``(output, final_state)`` pair is kept for
the kernels' uniform signature. ``hippo_legs_dplr`` gives S4's HiPPO-LegS matrix in this form.
"""

from __future__ import annotations

import torch
from torch import Tensor

IMPLS = ("dense", "woodbury", "neumann")


def _check(lam: Tensor, P: Tensor, Q: Tensor, delta: Tensor, x: Tensor) -> None:
    if lam.dim() != 2 or P.dim() != 3 or P.shape != Q.shape or P.shape[:2] != lam.shape:
        raise ValueError(
            f"expected lam [H, N], P and Q [H, N, r]; got lam {tuple(lam.shape)}, P {tuple(P.shape)}, "
            f"Q {tuple(Q.shape)}"
        )
    H, N = lam.shape
    if x.dim() != 4 or x.shape[2:] != (H, N) or delta.shape != x.shape[:3]:
        raise ValueError(
            f"expected x [B, T, H={H}, N={N}] and delta [B, T, H]; got x {tuple(x.shape)}, "
            f"delta {tuple(delta.shape)}"
        )


def _parts(lam: Tensor, P: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """``D [B, T, H, N]`` and ``U [B, T, H, N, r]`` of the system matrix ``D - U Q^H``."""
    half = (delta / 2).unsqueeze(-1)  # [B, T, H, 1]
    D = 1 - half * lam
    U = half.unsqueeze(-1) * P
    return D, U


def _qh(Q: Tensor, y: Tensor) -> Tensor:
    """``Q^H y`` for ``Q [H, N, r]``, ``y [B, T, H, N]`` -> ``[B, T, H, r]``."""
    return torch.einsum("hnr,bthn->bthr", Q.conj(), y)


def dplr_resolvent(
    lam: Tensor, P: Tensor, Q: Tensor, delta: Tensor, x: Tensor, impl: str = "woodbury", k: int = 8
) -> tuple[Tensor, None]:
    """``y_t = (I - delta_t/2 (diag(lam) + P Q^H))^{-1} x_t``; returns ``(y [B, T, H, N], None)``."""
    _check(lam, P, Q, delta, x)
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    D, U = _parts(lam, P, delta)
    if impl == "dense":
        M = torch.diag_embed(D) - U @ Q.conj().transpose(-1, -2)
        return torch.linalg.solve(M, x.unsqueeze(-1)).squeeze(-1), None
    Dinv_x = x / D
    if impl == "woodbury":
        Dinv_U = U / D.unsqueeze(-1)  # [B, T, H, N, r]
        K = torch.einsum("hnr,bthns->bthrs", Q.conj(), Dinv_U)  # [B, T, H, r, r]
        eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
        z = torch.linalg.solve(eye - K, _qh(Q, Dinv_x).unsqueeze(-1))  # [B, T, H, r, 1]
        return Dinv_x + (Dinv_U @ z).squeeze(-1), None
    if k < 0:
        raise ValueError(f"neumann needs k >= 0 terms, got {k}")
    y = Dinv_x
    for _ in range(k):
        y = (x + (U @ _qh(Q, y).unsqueeze(-1)).squeeze(-1)) / D
    return y, None


def neumann_radius(lam: Tensor, P: Tensor, Q: Tensor, delta: Tensor) -> Tensor:
    """Spectral radius of ``K = Q^H D^-1 U`` per token and head (``[B, T, H]``): the series' rate."""
    D, U = _parts(lam, P, delta)
    K = torch.einsum("hnr,bthns->bthrs", Q.conj(), U / D.unsqueeze(-1))
    return torch.linalg.eigvals(K).abs().amax(-1)


def hippo_legs_dplr(N: int, dtype: torch.dtype = torch.complex128) -> tuple[Tensor, Tensor, Tensor]:
    """S4's HiPPO-LegS matrix in DPLR form: ``lam [N]``, ``P, Q [N, 1]`` with
    ``V (diag(lam) + P Q^H) V^H = A_LegS`` for a unitary ``V`` (Gu et al. 2022, S4, NPLR form).

    ``A_LegS = S - p p^T`` with ``p_n = sqrt(n + 1/2)`` and ``S`` normal (``-1/2 I`` plus a skew part),
    so ``lam = eig(S)`` and ``P = V^H p``, ``Q = -V^H p``.
    """
    A, p = hippo_legs_matrix(N)
    S = A + p[:, None] * p[None, :]
    skew = S + 0.5 * torch.eye(N, dtype=torch.float64)
    w, V = torch.linalg.eigh(1j * skew.to(torch.complex128))  # 1j * skew is Hermitian
    lam = -0.5 - 1j * w
    Pv = V.conj().T @ p.to(torch.complex128)
    return lam.to(dtype), Pv[:, None].to(dtype), (-Pv)[:, None].to(dtype)


def hippo_legs_matrix(N: int) -> tuple[Tensor, Tensor]:
    """The dense HiPPO-LegS ``A`` (float64) and its rank-1 correction vector ``p``."""
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -(r[:, None] * r[None, :]).tril(-1) - torch.diag(n + 1)
    return A, torch.sqrt(n + 0.5)
