"""Generalised delta rule with per-channel decay (KDA-style), per head::

    S_t = (I - beta_t a_t b_t^T) diag(exp g_t) S_{t-1} + beta_t k_t v_t^T        S_t in R^{K x V}
    o_t = S_t^T q_t

``a = b = k`` is Kimi Delta Attention (KDA: the delta rule with a per-channel decay ``g <= 0``);
``a != b`` erases along ``a`` what is read along ``b`` (SO-KDA, seed 059, uses ``a`` = the key
covariance applied to ``k``); ``erase=False`` drops the removal term: gated linear attention
``S_t = diag(exp g_t) S_{t-1} + beta_t k_t v_t^T``. kernels/delta_rule.py covers ``a = b = k`` with a
scalar decay per head; this op is its generalisation to a channel decay and two removal vectors.

Layout ``q, k, a, b, g [B, T, H, K]``, ``v [B, T, H, V]``, ``beta [B, T, H]``, state ``[B, H, K, V]``.

``impl="chunk"`` (chunks of ``L``, all chunks at once, then a loop over chunks). With ``G`` the
inclusive cumulative ``g`` inside the chunk, ``D_ts = exp(G_t - G_s)`` (per channel, ``s <= t``) and
the removed values ``u_t = beta_t (diag(e^{g_t}) S_{t-1})^T b_t``, unrolling gives::

    (I + diag(beta) M_ba) U = diag(beta) [(b * e^G) S_0 + M_bk (beta V)]
    O   = (q * e^G) S_0 + M_qk (beta V) - M_qa U
    S_L = e^{G_L} S_0 + (k * e^{G_L - G})^T (beta V) - (a * e^{G_L - G})^T U

where ``M_xy[t, s] = sum_c x_t[c] D_ts[c] y_s[c]``, strictly lower (``s < t``) for ``M_ba, M_bk`` and
lower (``s <= t``) for ``M_qk, M_qa``. The unit lower-triangular system is solved once for all chunks,
with the two right-hand sides, giving ``U = U_0 + W S_0``; the loop over chunks is then
``O = A S_0 + c``, ``S_L = F S_0 + e`` with matrices precomputed per chunk.

``M_xy`` factorises as ``(x * e^{G - G_r}) (y * e^{G_r - G})^T`` with ``G_r`` the chunk's middle
value: one matmul, exact, with every factor within ``e^{+-range}`` (``range`` = the chunk's span of
``G``). Up to ``range <= 60`` (fp32; 600 in fp64) that is far inside exp's range; beyond it the
exact pairwise form (one ``exp(G_t - G_s) <= 1`` per ``(t, s, c)``) is used. Half-precision inputs
are computed in float32. ``impl="recurrent"``: the loop above (the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("recurrent", "chunk")


def scalar_decay_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """``S_t = exp(log_decay_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` with one decay per head and step.

    ``log_decay [B, T, H]`` (<= 0). The special case ``erase=False`` of ``generalized_delta_rule``
    with a decay shared by all channels, whose chunk form needs only an ``[L, L]`` decay matrix
    ``exp(G_t - G_s)`` (``s <= t``, masked before ``exp``) per chunk: ``O = (Q K^T * Gamma) V +
    (Q * e^G) S_0`` (RetNet's chunkwise retention with a data-dependent decay).
    """
    if log_decay.shape != q.shape[:3]:
        raise ValueError(f"log_decay must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(log_decay.shape)}")
    ones = torch.ones_like(log_decay)
    if impl == "recurrent":
        g = log_decay[..., None].expand(q.shape)
        return generalized_delta_rule(q, k, v, ones, g, erase=False, initial_state=initial_state, impl=impl)
    _check(q, k, v, ones, q, None, None, initial_state)
    if impl != "chunk":
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    out_dtype = v.dtype
    cd = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = chunk_size
    C = -(-T // L)
    pad = C * L - T

    def chunks(x: Tensor) -> Tensor:
        y = F.pad(x.to(cd), (0, 0) * (x.dim() - 2) + (0, pad)) if pad else x.to(cd)
        return y.unflatten(1, (C, L)).transpose(2, 3).transpose(1, 2).contiguous()  # [B, H, C, L, ...]

    qc = chunks(q)
    kc = qc if k is q else chunks(k)
    vc = kc if v is k else chunks(v)
    G = chunks(log_decay).cumsum(dim=-1)  # [B, H, C, L]
    lower = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    gamma = torch.exp(
        (G[..., :, None] - G[..., None, :]).masked_fill(~lower, float("-inf"))
    )  # [B, H, C, L, L]
    intra = ((qc @ kc.transpose(-1, -2)) * gamma) @ vc  # [B, H, C, L, V]
    q_in = qc * torch.exp(G)[..., None]
    k_out = kc * torch.exp(G[..., -1:] - G)[..., None]
    upd = k_out.transpose(-1, -2) @ vc  # [B, H, C, K, V]
    decay_all = torch.exp(G[..., -1])  # [B, H, C]
    S = q.new_zeros(B, H, K, V, dtype=cd) if initial_state is None else initial_state.to(cd)
    outs = []
    for intra_c, q_c, d_c, upd_c in zip(*(x.unbind(2) for x in (intra, q_in, decay_all, upd))):
        outs.append(intra_c + q_c @ S)
        S = d_c[:, :, None, None] * S + upd_c
    o = torch.stack(outs, dim=2).flatten(2, 3)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), S.to(out_dtype)


def _check(q, k, v, beta, g, a, b, initial_state) -> None:
    if q.dim() != 4 or k.shape != q.shape or g.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "expected q, k, g [B, T, H, K] and v [B, T, H, V] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, g {tuple(g.shape)}, v {tuple(v.shape)}"
        )
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    for name, x in (("a", a), ("b", b)):
        if x is not None and x.shape != q.shape:
            raise ValueError(f"{name} must be [B, T, H, K] = {tuple(q.shape)}, got {tuple(x.shape)}")
    if initial_state is not None:
        want = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must be [B, H, K, V] = {want}, got {tuple(initial_state.shape)}")


def generalized_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    erase: bool = True,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Returns ``(o [B, T, H, V], S [B, H, K, V])``; ``a`` and ``b`` default to ``k``; ``g <= 0``."""
    _check(q, k, v, beta, g, a, b, initial_state)
    out_dtype = v.dtype
    cd = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    q, k, v, beta, g = (x.to(cd) for x in (q, k, v, beta, g))
    a = k if a is None else a.to(cd)
    b = k if b is None else b.to(cd)
    S0 = None if initial_state is None else initial_state.to(cd)
    if impl == "recurrent":
        o, S = _recurrent(q, k, v, beta, g, a, b, erase, S0)
    elif impl == "chunk":
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        o, S = _chunk(q, k, v, beta, g, a, b, erase, S0, chunk_size)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    return o.to(out_dtype), S.to(out_dtype)


def _recurrent(q, k, v, beta, g, a, b, erase, S):
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1]) if S is None else S
    outs = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None] * S
        if erase:
            read = torch.einsum("bhk,bhkv->bhv", b[:, t], S)
            S = S - beta[:, t, :, None, None] * a[:, t, :, :, None] * read[:, :, None, :]
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, dim=1), S


def _safe_range(dtype: torch.dtype) -> float:
    return 60.0 if dtype == torch.float32 else 600.0


def _layout(T: int, L: int):
    """``[B, T, H, ...] -> [B, H, C, L, ...]`` (zero-padded to whole chunks), laying each tensor out once."""
    C = -(-T // L)
    pad = C * L - T
    cache: dict[int, Tensor] = {}

    # zero padding at the end: beta = 0 and g = 0 there, so padded steps leave the state unchanged
    def chunks(x: Tensor) -> Tensor:
        if id(x) not in cache:  # q, k, a, b are often the same tensor
            y = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad)) if pad else x
            cache[id(x)] = y.unflatten(1, (C, L)).transpose(2, 3).transpose(1, 2).contiguous()
        return cache[id(x)]

    return chunks


def _unlayout(o: Tensor, T: int) -> Tensor:
    """``[B, H, C, L, V] -> [B, T, H, V]``."""
    return o.flatten(2, 3)[:, :, :T].transpose(1, 2)


def _chunk(q, k, v, beta, g, a, b, erase, S0, L, pairwise: bool | None = None):
    chunks = _layout(q.shape[1], L)
    qc, kc, vc, gc, ac, bc = (chunks(x) for x in (q, k, v, g, a, b))
    o, S = _chunk_core(qc, kc, vc, gc, ac, bc, chunks(beta), erase, S0, pairwise)
    return _unlayout(o, q.shape[1]), S


def _chunk_core(qc, kc, vc, gc, ac, bc, betac, erase, S0, pairwise):
    """The chunk form on laid-out tensors ``[B, H, C, L, .]``; returns ``(o [B, H, C, L, V], S_T)``."""
    B, H, C, L, K = qc.shape
    V = vc.shape[-1]
    q = qc
    G = gc.cumsum(dim=3)  # [B, H, C, L, K]
    G_last = G[:, :, :, -1:]  # [B, H, C, 1, K]
    if pairwise is None:
        span = (G[:, :, :, 0] - G_last[:, :, :, 0]).detach().max() if L > 1 else G.new_zeros(())
        pairwise = bool(span > _safe_range(G.dtype))
    lower = torch.ones(L, L, dtype=q.dtype, device=q.device).tril()
    strict = lower.tril(-1)
    bv = betac[..., None] * vc  # [B, H, C, L, V]

    # M_xy[t, s] = sum_c x_t[c] exp(G_t[c] - G_s[c]) y_s[c], masked to s <= t (q rows) or s < t (b rows)
    if pairwise:
        D = torch.exp(
            (G[:, :, :, :, None] - G[:, :, :, None, :]).masked_fill(~lower.bool()[:, :, None], float("-inf"))
        )
        eG, decay_to_end = torch.exp(G), torch.exp(G_last - G)

        def M(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
            return (x[:, :, :, :, None] * D * y[:, :, :, None]).sum(-1) * mask
    else:  # exact factorisation about the chunk's middle: every factor within e^(+-span)
        G_ref = G[:, :, :, L // 2 : L // 2 + 1].detach()
        up = torch.exp(G - G_ref)
        down = 1.0 / up
        eG = up * torch.exp(G_ref)  # exp(G) <= 1
        decay_to_end = down * torch.exp(G_last - G_ref)  # exp(G_last - G) <= 1
        scaled: dict[tuple[int, bool], Tensor] = {}

        def side(x: Tensor, is_row: bool) -> Tensor:
            if (id(x), is_row) not in scaled:
                scaled[id(x), is_row] = x * (up if is_row else down)
            return scaled[id(x), is_row]

        def M(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
            return (side(x, True) @ side(y, False).transpose(-1, -2)) * mask  # entries finite: no inf * 0

    c_out = M(qc, kc, lower) @ bv  # [B, H, C, L, V]
    A_out = qc * eG  # [B, H, C, L, K]
    F_state = torch.diag_embed(torch.exp(G_last[:, :, :, 0]))  # [B, H, C, K, K]
    e_state = (kc * decay_to_end).transpose(-1, -2) @ bv  # [B, H, C, K, V]
    if erase:
        tri = torch.eye(L, dtype=q.dtype, device=q.device) + betac[..., None] * M(bc, ac, strict)
        rhs = betac[..., None] * torch.cat([M(bc, kc, strict) @ bv, bc * eG], dim=-1)
        sol = torch.linalg.solve_triangular(
            tri, rhs, upper=False, unitriangular=True
        )  # [U0 | W]: U = U0 + W S_0
        Y = M(qc, ac, lower) @ sol  # M_qa [U0 | W]
        Z = (ac * decay_to_end).transpose(-1, -2) @ sol  # [B, H, C, K, V + K]
        c_out = c_out - Y[..., :V]
        A_out = A_out - Y[..., V:]
        e_state = e_state - Z[..., :V]
        F_state = F_state - Z[..., V:]

    # per chunk, [O; S_next] = [A; F] S_0 + [c; e]: one matmul per chunk
    AF = torch.cat([A_out, F_state], dim=-2)  # [B, H, C, L + K, K]
    ce = torch.cat([c_out, e_state], dim=-2)  # [B, H, C, L + K, V]
    S = q.new_zeros(B, H, K, V) if S0 is None else S0
    outs = []  # unbind, not x[:, :, c]: one backward op instead of a zero-filled tensor per chunk
    for AF_c, ce_c in zip(AF.unbind(2), ce.unbind(2)):
        R = AF_c @ S + ce_c
        outs.append(R[..., :L, :])
        S = R[..., L:, :]
    return torch.stack(outs, dim=2), S


def so_kda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor,
    metric_decay: float,
    initial_state: tuple[Tensor, Tensor] | None = None,
    impl: str = "chunk",
    chunk_size: int = 16,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Second-order KDA (seed 059): the delta rule erasing along the key-covariance direction.

    ``M_t = metric_decay M_{t-1} + k_t k_t^T``, ``a_t = M_t k_t / ||M_t k_t||``, then
    ``generalized_delta_rule`` with ``(a, b) = (a, k)``. State ``(M [B, H, K, K], S [B, H, K, V])``.
    The chunk form lays ``k`` out once and computes ``M_t k_t`` in that layout (a constant ``[L, L]``
    decay matrix ``gamma^(t-s)`` inside a chunk, the state ``M`` across chunks), so the removal
    direction never leaves it. ``||M_t k_t|| >= k_t^T M_t k_t >= ||k_t||^4``: safe for unit keys.
    """
    if not 0 < metric_decay <= 1:
        raise ValueError(f"metric_decay must be in (0, 1], got {metric_decay}")
    M0, S0 = (None, None) if initial_state is None else initial_state
    _check(q, k, v, beta, g, None, None, S0)
    B, T, H, K = q.shape
    if M0 is not None and tuple(M0.shape) != (B, H, K, K):
        raise ValueError(f"initial metric must be [B, H, K, K] = {(B, H, K, K)}, got {tuple(M0.shape)}")
    out_dtype = v.dtype
    cd = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    q, k, v, beta, g = (x.to(cd) for x in (q, k, v, beta, g))
    M = q.new_zeros(B, H, K, K) if M0 is None else M0.to(cd)
    S0 = None if S0 is None else S0.to(cd)
    if impl == "recurrent":
        a_steps = []
        for t in range(T):
            M = metric_decay * M + k[:, t, :, :, None] * k[:, t, :, None, :]
            a_steps.append(F.normalize(torch.einsum("bhij,bhj->bhi", M, k[:, t]), dim=-1))
        a = torch.stack(a_steps, dim=1) if T else k
        o, S = _recurrent(q, k, v, beta, g, a, k, True, S0)
        return o.to(out_dtype), (M.to(out_dtype), S.to(out_dtype))
    if impl != "chunk":
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    L = chunk_size
    chunks = _layout(T, L)
    qc, kc, vc, gc, betac = (chunks(x) for x in (q, k, v, g, beta))
    C = kc.shape[2]
    # M_t k_t inside chunk c: gamma^(t+1) M_start k_t + sum_{s<=t} gamma^(t-s) (k_s . k_t) k_s
    idx = torch.arange(L, device=q.device, dtype=torch.float64)
    powers = metric_decay ** (idx[:, None] - idx[None, :]).clamp_min(0)
    gamma = (powers * (idx[:, None] >= idx[None, :])).to(cd)  # [L, L]
    to_start = (metric_decay ** (idx + 1)).to(cd)[:, None]  # [L, 1]
    last = T - (C - 1) * L  # real steps in the last chunk: the state ends there, not at the padding
    steps = torch.full((C, 1, 1), float(L), dtype=torch.float64, device=q.device)
    steps[-1] = last
    to_end = (metric_decay ** (steps - 1 - idx[:, None]).clamp_min(0)).to(cd)  # [C, L, 1]; pads are 0 rows
    mk = ((kc @ kc.transpose(-1, -2)) * gamma) @ kc  # [B, H, C, L, K]
    upd = (kc * to_end).transpose(-1, -2) @ kc  # [B, H, C, K, K]
    carried = []
    for c, (k_c, upd_c) in enumerate(zip(kc.unbind(2), upd.unbind(2))):
        carried.append(k_c @ M)  # (M_start k_t)^T, M symmetric
        M = metric_decay ** float(steps[c]) * M + upd_c
    ac = F.normalize(mk + to_start * torch.stack(carried, dim=2), dim=-1)
    o, S = _chunk_core(qc, kc, vc, gc, ac, kc, betac, True, S0, None)
    return _unlayout(o, T).to(out_dtype), (M.to(out_dtype), S.to(out_dtype))
