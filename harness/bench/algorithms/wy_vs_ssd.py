"""The DeltaNet chunk two ways: naive WY vs block-SSD (seed experiment 002).

The delta rule (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length")::

    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T        S in R^{Dk x Dv}
    o_t = S_t^T q_t

Within a chunk of C tokens starting from state S, the product of the ``(I - beta k k^T)`` factors
has the WY form ``I - W^T K`` and the state becomes ``S + K^T (U - W S)``, with ``W = T K``,
``U = T V`` and ``T = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta)`` (the UT transform). Outputs:
``O = Q S + tril(Q K^T) (U - W S)``. ``impl=``:

- ``"sequential"``: the token loop above, the reference.
- ``"naive_wy"``: the WY vectors by the original row recursion
  ``w_r = beta_r (k_r - sum_{i<r} (k_i . k_r) w_i)`` (likewise ``u_r``), a loop over the C positions
  of a chunk (vectorised over all chunks), then chunk by chunk: ``U - W S``, outputs, new state.
  Every output matmul sits inside the loop over chunks.
- ``"block_ssd"``: the Mamba-2 SSD arrangement (Dao & Gu 2024) applied to the WY form: the UT
  transform as one batched triangular solve, and every state-independent product (``W``, ``U``,
  ``tril(Q K^T)``, ``Q - tril(Q K^T) W``, ``tril(Q K^T) U``) for all chunks at once in batched
  matmuls; only the state recurrence ``S <- S + K_c^T (U_c - W_c S)`` runs in a loop over chunks;
  then all outputs at once, ``O = (Q - tril(Q K^T) W) S_c + tril(Q K^T) U``.

Layout: ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``, ``beta [B, T, H]``, optional
``initial_state [B, H, Dk, Dv]``; returns ``(o [B, T, H, Dv], S_T [B, H, Dk, Dv])``. T need not be a
multiple of the chunk size (the last chunk is zero-padded with beta = 0, which leaves S unchanged).
"""

from __future__ import annotations

import torch
from torch import Tensor

IMPLS = ("sequential", "naive_wy", "block_ssd")


def _check(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, initial_state: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or beta.shape != q.shape[:3]:
        raise ValueError(
            "expected q, k [B, T, H, Dk], v [B, T, H, Dv], beta [B, T, H]; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, beta {tuple(beta.shape)}"
        )
    B, _, H, Dk = q.shape
    want = (B, H, Dk, v.shape[-1])
    if initial_state is not None and tuple(initial_state.shape) != want:
        raise ValueError(f"initial_state must be [B, H, Dk, Dv] = {want}, got {tuple(initial_state.shape)}")


def delta_rule_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "block_ssd",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Delta-rule outputs and final state; see the module docstring for the implementations."""
    _check(q, k, v, beta, initial_state)
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T, H, Dk = q.shape
    S = q.new_zeros(B, H, Dk, v.shape[-1]) if initial_state is None else initial_state
    if impl == "sequential":
        return delta_rule_sequential(q, k, v, beta, S)
    C = min(chunk_size, max(T, 1))
    nc = -(-T // C)
    pad = nc * C - T

    def chunks(x: Tensor) -> Tensor:  # [B, T, H, ...] -> [B, H, nc, C, ...]
        x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 3) + (0, 0, 0, pad)) if pad else x
        return x.reshape(B, nc, C, H, *x.shape[3:]).movedim(3, 1)

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    bc = chunks(beta.unsqueeze(-1)).squeeze(-1)  # [B, H, nc, C]
    fn = _naive_wy if impl == "naive_wy" else _block_ssd
    o, S = fn(qc, kc, vc, bc, S)
    o = o.movedim(1, 3).reshape(B, nc * C, H, -1)[:, :T]
    return o, S


def delta_rule_sequential(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """The reference: one rank-1 update per token."""
    outs = []
    for t in range(q.shape[1]):
        k_t, v_t, b_t = k[:, t], v[:, t], beta[:, t, :, None]  # [B, H, Dk], [B, H, Dv], [B, H, 1]
        pred = torch.einsum("bhk,bhkv->bhv", k_t, S)
        S = S + k_t.unsqueeze(-1) * (b_t * (v_t - pred)).unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, dim=1), S


def _naive_wy(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """Chunks ``[B, H, nc, C, D]``: WY row recursion, then chunk by chunk."""
    C = k.shape[3]
    kk = k @ k.transpose(-1, -2)  # [B, H, nc, C, C]
    w_rows: list[Tensor] = []
    u_rows: list[Tensor] = []
    for r in range(C):
        b_r = beta[..., r, None]
        w_r, u_r = k[..., r, :], v[..., r, :]
        if r:
            coef = kk[..., :r, r, None]  # (k_i . k_r), i < r
            w_r = w_r - (coef * torch.stack(w_rows, dim=-2)).sum(-2)
            u_r = u_r - (coef * torch.stack(u_rows, dim=-2)).sum(-2)
        w_rows.append(b_r * w_r)
        u_rows.append(b_r * u_r)
    W, U = torch.stack(w_rows, dim=-2), torch.stack(u_rows, dim=-2)
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    outs = []
    for c in range(q.shape[2]):
        qc, kc = q[:, :, c], k[:, :, c]
        new_v = U[:, :, c] - W[:, :, c] @ S
        attn = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0)
        outs.append(qc @ S + attn @ new_v)
        S = S + kc.transpose(-1, -2) @ new_v
    return torch.stack(outs, dim=2), S


def _block_ssd(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """Chunks ``[B, H, nc, C, D]``: batched UT transform and intra-chunk products, loop for S only."""
    C = k.shape[3]
    eye = torch.eye(C, dtype=k.dtype, device=k.device)
    strict = torch.ones(C, C, dtype=torch.bool, device=k.device).tril(-1)
    lower = (beta.unsqueeze(-1) * (k @ k.transpose(-1, -2))).masked_fill(~strict, 0)
    Tm = torch.linalg.solve_triangular(eye + lower, torch.diag_embed(beta), upper=False, unitriangular=True)
    W, U = Tm @ k, Tm @ v  # [B, H, nc, C, Dk], [B, H, nc, C, Dv]
    attn = (q @ k.transpose(-1, -2)).masked_fill(~(strict | eye.bool()), 0)
    q_eff = q - attn @ W  # outputs are q_eff S_c + attn U
    attn_u = attn @ U
    kt = k.transpose(-1, -2)
    states = []
    for c in range(q.shape[2]):
        states.append(S)
        S = S + kt[:, :, c] @ (U[:, :, c] - W[:, :, c] @ S)
    S_in = torch.stack(states, dim=2)  # [B, H, nc, Dk, Dv]
    return q_eff @ S_in + attn_u, S
