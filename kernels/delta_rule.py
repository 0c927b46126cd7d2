"""The (gated) delta rule, per head::

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T        S_t in R^{N x P}
    o_t = S_t^T q_t

Layout ``q, k [B, T, H, N]``, ``v [B, T, H, P]``, ``beta, decay [B, T, H]`` (one scalar per head and
step), state ``[B, H, N, P]``. ``decay=None`` is DeltaNet (``a_t = 1``); a decay in (0, 1] is Gated
DeltaNet (Yang et al. 2025). Keys are used as given: callers normalise them (with ``||k|| = 1`` the
transition has eigenvalues ``1`` and ``1 - beta``, so ``beta in (0, 2)`` keeps it stable).

``impl="chunk"``: the WY / UT form of Yang et al. 2024 ("Parallelizing linear transformers with the
delta rule over sequence length"), gated as in Gated DeltaNet. Writing ``S_t = a_t S_{t-1} + k_t u_t^T``
with pseudo-values ``u_t = beta_t (v_t - a_t S_{t-1}^T k_t)``, inside a chunk with ``g_i = sum_{s<=i}
log a_s``, ``Gamma_ij = exp(g_i - g_j)`` (``j <= i``, masked before ``exp``) and state ``S_0`` entering it::

    (I + strict_tril(diag(beta) (Gamma * K K^T))) U = diag(beta) (V - diag(e^g) K S_0)
    O   = diag(e^g) Q S_0 + tril(Gamma * Q K^T) U
    S_L = e^{g_L} S_0 + (K * e^{g_L - g})^T U

The unit lower-triangular system is solved once per chunk, for all chunks at once, with both
right-hand sides ``[beta V | beta e^g K]`` (giving ``U0`` and ``W``), so the loop over chunks only does
``U = U0 - W S_0`` and three small matmuls. ``solve`` picks how: ``"trsm"`` (triangular solve, which
reads only the strictly lower part) or ``"newton_schulz"`` (proposal 043): ``X <- X (2I - A X)`` from
``X = I``. The error ``E = I - A X`` squares each step and ``E_0 = -strict_tril(...)`` is nilpotent
(``E_0^L = 0``), so ``ceil(log2 L)`` iterations give the EXACT inverse (up to rounding), matmuls only;
it is applied to the right-hand sides in product form (``newton_schulz_solve``).

``log a`` is clamped below at ``LOG_MIN[dtype]`` (as in diag_scan): ``a = 0`` acts as ``exp(LOG_MIN)``.
Half-precision inputs are computed in float32 and cast back. ``impl="recurrent"``: the loop reference.

``delta_product`` (DeltaProduct, Siems et al. 2025) runs ``n_h`` Householder steps per token as the
delta rule over ``n_h * T`` virtual tokens, read at each token's last virtual step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .diag_scan import LOG_MIN, compute_dtype

IMPLS = ("chunk", "recurrent")
SOLVES = ("trsm", "newton_schulz")


def _check(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, decay: Tensor | None, initial_state: Tensor | None
) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "expected q, k [B, T, H, N] and v [B, T, H, P] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    if decay is not None and decay.shape != q.shape[:3]:
        raise ValueError(f"decay must be [B, T, H] = {tuple(q.shape[:3])} or None, got {tuple(decay.shape)}")
    if initial_state is not None:
        Bsz, _, H, N = q.shape
        want = (Bsz, H, N, v.shape[-1])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must be [B, H, N, P] = {want}, got {tuple(initial_state.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if t.is_complex():
            raise ValueError(f"{name} must be real, got {t.dtype}")


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
    solve: str = "trsm",
) -> tuple[Tensor, Tensor]:
    """Returns ``(o [B, T, H, P], final_state [B, H, N, P])``; see the module docstring."""
    _check(q, k, v, beta, decay, initial_state)
    if impl == "recurrent" or (impl in IMPLS and q.shape[1] == 0):  # T = 0: nothing to chunk
        return delta_rule_recurrent(q, k, v, beta, decay, initial_state)
    if impl == "chunk":
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if solve not in SOLVES:
            raise ValueError(f"unknown solve {solve!r}; allowed: {', '.join(SOLVES)}")
        return delta_rule_chunk(q, k, v, beta, decay, initial_state, chunk_size, solve)
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")


def delta_rule_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    decay: Tensor | None = None,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    cdt, odt = compute_dtype(q, k, v, beta, decay, initial_state)
    q, k, v, beta = (t.to(cdt) for t in (q, k, v, beta))
    Bsz, T, H, N = q.shape
    S = q.new_zeros(Bsz, H, N, v.shape[-1]) if initial_state is None else initial_state.to(cdt)
    outs = []
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        S = S - bt * kt[..., :, None] * (kt[..., None, :] @ S)
        if decay is not None:
            S = decay[:, t, :, None, None].to(cdt) * S
        S = S + bt * kt[..., :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(Bsz, 0, H, v.shape[-1], dtype=cdt)
    return o.to(odt), S.to(odt)


def unit_lower_inverse(A: Tensor, solve: str = "trsm") -> Tensor:
    """Inverse of a batch of unit lower-triangular matrices ``A [..., L, L]``.

    ``"newton_schulz"``: ``X <- X (2I - A X)`` from ``X = I`` for ``ceil(log2 L)`` steps; exact because
    the error ``I - A X`` starts strictly lower triangular (nilpotent) and squares each step.
    """
    L = A.shape[-1]
    eye = torch.eye(L, dtype=A.dtype, device=A.device)
    if solve == "trsm":
        return torch.linalg.solve_triangular(A, eye.expand_as(A), upper=False, unitriangular=True)
    if solve == "newton_schulz":
        X = eye.expand_as(A)
        for _ in range(newton_schulz_steps(L)):
            X = X @ (2 * eye - A @ X)
        return X
    raise ValueError(f"unknown solve {solve!r}; allowed: {', '.join(SOLVES)}")


def newton_schulz_steps(L: int) -> int:
    """``ceil(log2 L)``: the number of Newton-Schulz steps that make the inverse exact."""
    return max(0, math.ceil(math.log2(L))) if L > 1 else 0


def newton_schulz_solve(strict: Tensor, rhs: Tensor) -> Tensor:
    """``(I + strict)^{-1} rhs`` for strictly lower ``strict [..., L, L]``, matmuls only, exact.

    The Newton-Schulz iterate ``X_{k+1} = X_k (2I - A X_k)`` from ``X_0 = I`` equals ``X_k (I + E_k)`` with
    ``E_k = I - A X_k = E_{k-1}^2`` and ``E_0 = -strict``; all are polynomials in ``E_0``, so they commute
    and the factors can be applied to the right-hand side directly (one ``L x L`` squaring and one
    ``L x L`` by ``L x R`` product per step, instead of forming ``X``). After ``ceil(log2 L)`` steps
    ``E = E_0^L = 0``: the result is exact.
    """
    E = -strict
    x = rhs
    steps = newton_schulz_steps(strict.shape[-1])
    for i in range(steps):
        x = x + E @ x
        if i + 1 < steps:
            E = E @ E
    return x


def delta_rule_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    solve: str = "trsm",
    read_stride: int = 1,
) -> tuple[Tensor, Tensor]:
    """Chunk form. ``read_stride > 1`` (used by ``delta_product``): ``q [B, T / stride, H, N]`` holds
    queries for steps ``stride - 1, 2 stride - 1, ...`` only and the output has those rows only (the
    other rows would be read with zero queries); the chunk length is rounded down to a multiple of it."""
    cdt, odt = compute_dtype(q, k, v, beta, decay, initial_state)
    Bsz, T, H, N = k.shape
    P = v.shape[-1]
    rs = read_stride
    if T % rs or q.shape[1] * rs != T:
        raise ValueError(
            f"read_stride={rs} needs T={T} divisible by it and q with T / stride rows, got {q.shape[1]}"
        )
    L = max(rs, min(chunk_size, T) // rs * rs)
    C = -(-T // L)
    pad = C * L - T

    def chunks(t: Tensor) -> Tensor:  # [B, T, H, ...] -> [B, H, C, L, ...]; padding: beta 0, no input
        t = t.to(cdt).transpose(1, 2)
        if pad:
            t = F.pad(t, (0, 0) * (t.dim() - 3) + (0, pad))
        return t.unflatten(2, (C, L))

    k, v = chunks(k), chunks(v)
    q = q.to(cdt).transpose(1, 2)
    q = (F.pad(q, (0, 0, 0, pad // rs)) if pad else q).unflatten(2, (C, L // rs))  # [B, H, C, L/rs, N]
    beta = chunks(beta)[..., None]  # [B, H, C, L, 1]
    causal = torch.ones(L, L, dtype=cdt, device=k.device).tril()  # float masks: cheaper than where()
    read = slice(rs - 1, None, rs)  # the rows that are read out
    bk = beta * k
    kk = bk @ k.transpose(-1, -2)  # [B, H, C, L, L]; only its strictly lower part is used
    qk = q @ k.transpose(-1, -2)
    if decay is not None:
        la = torch.log(decay.to(cdt).clamp_min(math.exp(LOG_MIN.get(cdt, -30.0))))
        g = chunks(la[..., None]).squeeze(-1).cumsum(dim=-1)  # [B, H, C, L]; padded steps: log a = 0
        # exp(g_i - g_j) for j <= i, masked (to -inf) before exp: every exponent is <= 0
        above = torch.ones(L, L, dtype=torch.bool, device=k.device).triu(1)
        gamma = torch.exp((g[..., :, None] - g[..., None, :]).masked_fill(above, -math.inf))
        kk, qk = kk * gamma, qk * gamma[..., read, :]
        eg = torch.exp(g)[..., None]  # [B, H, C, L, 1]
        g_end = g[..., -1:]
        a_chunk = torch.exp(g_end)[..., None]  # [B, H, C, 1, 1]
        k_end = k * torch.exp(g_end - g)[..., None]
        q_in = q * eg[..., read, :]
        rhs = torch.cat([beta * v, bk * eg], dim=-1)
    else:
        a_chunk, k_end, q_in = None, k, q
        qk = qk * causal[read]
        rhs = torch.cat([beta * v, bk], dim=-1)
    # (I + strict_tril(kk)) [U0 | W] = rhs
    if solve == "trsm":  # unitriangular: the diagonal and upper part of kk are never read
        sol = torch.linalg.solve_triangular(kk, rhs, upper=False, unitriangular=True)
    else:
        sol = newton_schulz_solve(kk * torch.ones_like(causal).tril(-1), rhs)
    u0, w = sol.split([P, N], dim=-1)  # [B, H, C, L, P], [B, H, C, L, N] (split: one cat in backward)

    S = None if initial_state is None else initial_state.to(cdt)  # None: a zero state, skip its products
    outs = []
    # unbind once: indexing chunk c inside the loop would make autograd zero-fill a full-size
    # gradient per chunk (quadratic in the number of chunks)
    per_chunk = [t.unbind(2) for t in (u0, w, q_in, qk, k_end.transpose(-1, -2))]
    a_list = [None] * C if a_chunk is None else a_chunk.unbind(2)
    for (u0_c, w_c, q_c, qk_c, kT_c), a_c in zip(zip(*per_chunk, strict=True), a_list, strict=True):
        if S is None:  # loop over chunks only
            u = u0_c
            outs.append(qk_c @ u)
            S = kT_c @ u
            continue
        u = u0_c - w_c @ S
        outs.append(q_c @ S + qk_c @ u)
        S = S if a_c is None else a_c * S
        S = S + kT_c @ u
    o = torch.stack(outs, dim=2).flatten(2, 3)[:, :, : T // rs].transpose(1, 2)  # [B, T / rs, H, P]
    return o.to(odt), S.to(odt)


def delta_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
    solve: str = "trsm",
) -> tuple[Tensor, Tensor]:
    """DeltaProduct: ``k [B, T, n_h, H, N]``, ``v [B, T, n_h, H, P]``, ``beta [B, T, n_h, H]``, ``q [B, T, H, N]``.

    Per token ``S <- (I - beta_i k_i k_i^T) S + beta_i k_i v_i^T`` for ``i = 1..n_h`` (after the token's
    decay ``a_t``, ``decay [B, T, H]``, applied once at its first step), then ``o_t = S^T q_t``. Run as
    the delta rule over ``n_h * T`` virtual tokens (``chunk_size`` counts virtual tokens, rounded down
    to a multiple of ``n_h``); only each token's last virtual step is read out (``read_stride``).
    Returns ``(o [B, T, H, P], final_state)``.
    """
    if k.dim() != 5 or v.dim() != 5 or beta.dim() != 4 or q.dim() != 4:
        raise ValueError(
            "expected q [B, T, H, N], k [B, T, n_h, H, N], v [B, T, n_h, H, P], beta [B, T, n_h, H]; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, beta {tuple(beta.shape)}"
        )
    Bsz, T, nh, H, N = k.shape
    if q.shape != (Bsz, T, H, N) or v.shape[:4] != (Bsz, T, nh, H) or beta.shape != (Bsz, T, nh, H):
        raise ValueError(
            "expected q [B, T, H, N], k [B, T, n_h, H, N], v [B, T, n_h, H, P], beta [B, T, n_h, H] with "
            f"matching sizes; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"beta {tuple(beta.shape)}"
        )
    dv = None
    if decay is not None:
        if decay.shape != (Bsz, T, H):
            raise ValueError(f"decay must be [B, T, H] = {(Bsz, T, H)} or None, got {tuple(decay.shape)}")
        dv = torch.cat(
            [decay[:, :, None], torch.ones_like(decay)[:, :, None].expand(-1, -1, nh - 1, -1)], dim=2
        )
        dv = dv.flatten(1, 2)
    kf, vf, bf = k.flatten(1, 2), v.flatten(1, 2), beta.flatten(1, 2)
    if impl == "chunk" and T > 0:  # queries only at each token's last virtual step: 1/n_h of the readout
        _check(kf, kf, vf, bf, dv, initial_state)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if solve not in SOLVES:
            raise ValueError(f"unknown solve {solve!r}; allowed: {', '.join(SOLVES)}")
        return delta_rule_chunk(q, kf, vf, bf, dv, initial_state, chunk_size, solve, read_stride=nh)
    qv = torch.cat([torch.zeros_like(q)[:, :, None].expand(-1, -1, nh - 1, -1, -1), q[:, :, None]], dim=2)
    o, S = delta_rule(
        qv.flatten(1, 2), kf, vf, bf, dv, initial_state, impl=impl, chunk_size=chunk_size, solve=solve
    )
    return o.unflatten(1, (T, nh))[:, :, -1], S


def token_cost(N: int, P: int, n_householder: int = 1, elem_bytes: int = 4):
    """Per head and token: each Householder step ``h -= beta k (k^T h - v^T)`` is ``k^T h`` (2 N P), the
    rank-1 update (3 N P); the readout ``h^T q`` 2 N P. DeltaProduct-n: n steps per token. State ``N P``."""
    from .cost import recurrence

    return recurrence(n_householder * 5 * N * P + 2 * N * P, N * P, elem_bytes)
