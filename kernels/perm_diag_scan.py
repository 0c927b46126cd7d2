"""PD-SSM scan: ``h_t = P_t D_t h_{t-1} + b_t`` with ``P_t`` column one-hot and ``D_t`` diagonal.

Terzić et al. 2025 (NeurIPS), "Structured Sparse Transition Matrices to Enable State Tracking in
State-Space Models" (trick 249). Column ``j`` of ``A_t = P_t D_t`` holds the single entry ``D_t[j]``
at row ``idx_t[j]``: ``(A h)[i] = sum_{j : idx[j] = i} D[j] h[j]`` (a scatter-add). Such matrices are
closed under products in O(N)::

    (A2 A1): idx = idx2[idx1],  D = D2[idx1] * D1        (index gather)
    A2 b   : scatter-add of D2 * b along the state rows

so the scan costs ``O(N P)`` per combine, like a diagonal SSM. ``idx`` need not be a permutation
(columns may share a row): the class is the monoid of all maps of N states, which is what lets one
layer emulate any N-state automaton. ``A^H`` is the gather ``(A^H g)[j] = conj(D[j]) g[idx[j]]``.

Layout: ``idx [B, T, H, N]`` (int64), ``D [B, T, H, N]`` (real or complex), ``q, k [B, T, H, N]``
(real or complex), ``v [B, T, H, P]``, state ``[B, H, N, P]``; readout ``o_t = Re(h_t^T q_t)``.

``impl="recurrent"``: plain loop over dense one-hot matrices (the reference). ``impl="scan"``: the
two-sweep chunked scan of ``dense_scan`` (``upsweep`` / ``sweep``) over ``(idx, D)`` pairs, with a
hand-written backward: the adjoint runs the reversed (gather) recurrence over the same block
products. ``P_ste``: an optional dense ``[B, T, H, N, N]`` tensor standing for the one-hot ``P_t``.
Its values are not read; it receives ``dL/dP_t = Re(dL/dA_t * conj(D_t))`` evaluated at the hard
one-hot, i.e. pass the soft relaxation (e.g. a column softmax) to get the straight-through estimator
of the paper (whose released JAX code computes the same ``grad_P`` in its custom VJP).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dense_scan import Trans, chunk_layout, sweep, to_chunks, upsweep

IMPLS = ("recurrent", "scan")


def pd_compose(later: Trans, earlier: Trans) -> Trans:
    """``later @ earlier`` for column one-hot x diagonal matrices given as ``(idx, D)``."""
    (i2, d2), (i1, d1) = later, earlier
    return i2.gather(-1, i1), d2.gather(-1, i1) * d1


def pd_apply(tr: Trans, x: Tensor, adjoint: bool = False) -> Tensor:
    """``A x`` (scatter-add) or ``A^H x`` (gather) for ``A = (idx, D)``, ``x [..., N, P]``."""
    idx, D = tr
    index = idx[..., None].expand(*idx.shape, x.shape[-1])
    if adjoint:
        return D.conj()[..., None] * x.gather(-2, index)
    src = D[..., None] * x
    return torch.zeros_like(src).scatter_add_(-2, index, src)


def pd_dense(idx: Tensor, D: Tensor) -> Tensor:
    """The dense ``[..., N, N]`` matrix ``P D`` (for references and tests)."""
    N = idx.shape[-1]
    onehot = torch.nn.functional.one_hot(idx, N).transpose(-1, -2).to(D.dtype)  # [..., row, col]
    return onehot * D[..., None, :]


class _PDRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx: Tensor, D: Tensor, b: Tensor, h0: Tensor, P_ste: Tensor | None, chunk_size: int):
        M, T, N, P = b.shape
        C, nc = chunk_layout(T, chunk_size)
        ar = torch.arange(N, device=idx.device)
        levels = upsweep(
            (to_chunks(idx, C, nc, fill=ar), to_chunks(D, C, nc, fill=torch.ones((), dtype=D.dtype))),
            pd_compose,
        )
        E, h_T = sweep(levels, to_chunks(b, C, nc), h0, pd_apply)
        h_prev = E.flatten(1, 2)[:, :T]
        ctx.save_for_backward(*(x for lv in levels for x in lv), h_prev, idx, D)
        ctx.meta = (M, T, N, P, C, nc, len(levels), P_ste is not None, D.is_complex())
        return torch.cat([h_prev[:, 1:], h_T[:, None]], dim=1), h_T

    @staticmethod
    def backward(ctx, g_all: Tensor | None, g_T: Tensor | None):
        M, T, N, P, C, nc, n_levels, has_ste, d_complex = ctx.meta
        saved = ctx.saved_tensors
        levels = [tuple(saved[2 * j : 2 * j + 2]) for j in range(n_levels)]
        h_prev, idx, D = saved[2 * n_levels :]
        # Gh_t = A_t^H G_t obeys Gh_t = A_t^H (g_t + Gh_{t+1}), Gh_T = g_T; G_t = g_t + Gh_{t+1}
        if g_all is not None:
            w = to_chunks(pd_apply((idx, D), g_all, adjoint=True), C, nc)
        else:
            w = h_prev.new_zeros(M, nc, C, N, P)
        init = g_T if g_T is not None else h_prev.new_zeros(M, N, P)
        E, gh0 = sweep(levels, w, init, pd_apply, reverse=True)
        G = E.flatten(1, 2)[:, :T]
        if g_all is not None:
            G = G + g_all
        gD = gP = None
        if ctx.needs_input_grad[1]:
            index = idx[..., None].expand(*idx.shape, P)
            gD = (G.gather(-2, index) * h_prev.conj()).sum(-1)  # dL/dA[idx_j, j] (P real)
            if not d_complex and gD.is_complex():
                gD = gD.real
        if has_ste and ctx.needs_input_grad[4]:
            gP = G @ (D[..., None] * h_prev).mH  # dL/dA * conj(D) over all (row, col)
            gP = gP.real if gP.is_complex() else gP
        return None, gD, G, gh0, gP, None


def _recurrent(idx: Tensor, D: Tensor, b: Tensor, h: Tensor, P_ste: Tensor | None):
    A = pd_dense(idx, D)
    if P_ste is not None:  # a dense reference through which autograd reaches P_ste
        A = A + (P_ste - P_ste.detach()).to(A.dtype) * D[..., None, :]
    outs = []
    for t in range(b.shape[1]):
        h = A[:, t] @ h + b[:, t]
        outs.append(h)
    return torch.stack(outs, dim=1), h


def _hm(x: Tensor) -> Tensor:
    """``[B, T, H, ...] -> [B*H, T, ...]`` (head-major, the working layout)."""
    return x.transpose(1, 2).flatten(0, 1)


def _check(idx: Tensor, D: Tensor, B: int, T: int, H: int, N: int, P: int, h0, P_ste) -> None:
    if idx.shape != (B, T, H, N) or D.shape != idx.shape:
        raise ValueError(
            f"expected idx, D [B, T, H, N] = {(B, T, H, N)}; got idx {tuple(idx.shape)}, D {tuple(D.shape)}"
        )
    if idx.dtype != torch.int64:
        raise ValueError(f"idx must be int64 row indices, got {idx.dtype}")
    if P_ste is not None and tuple(P_ste.shape) != (B, T, H, N, N):
        raise ValueError(f"P_ste must be [B, T, H, N, N] = {(B, T, H, N, N)}, got {tuple(P_ste.shape)}")
    if h0 is not None and tuple(h0.shape) != (B, H, N, P):
        raise ValueError(f"initial_state must be [B, H, N, P] = {(B, H, N, P)}, got {tuple(h0.shape)}")


def _run(idx, D, b, initial_state, impl, chunk_size, P_ste, B, H):
    """Head-major core: ``idx, D [B*H, T, N]``, ``b [B*H, T, N, P]`` -> ``(h_all, h_T [B, H, N, P])``."""
    M, T, N, P = b.shape
    dtype = torch.promote_types(D.dtype, b.dtype)
    if initial_state is not None:
        dtype = torch.promote_types(dtype, initial_state.dtype)
    D, b = D.to(dtype), b.to(dtype)
    h0 = b.new_zeros(M, N, P) if initial_state is None else initial_state.reshape(M, N, P).to(dtype)
    if impl == "recurrent":
        h_all, h_T = _recurrent(idx, D, b, h0, P_ste)
    elif impl == "scan":
        if P_ste is not None and not P_ste.requires_grad:
            P_ste = None
        h_all, h_T = _PDRecurrence.apply(idx, D, b, h0, P_ste, chunk_size)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    return h_all, h_T.reshape(B, H, N, P)


def pd_recurrence(
    idx: Tensor,
    D: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "scan",
    chunk_size: int = 64,
    P_ste: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``h_t = P_t D_t h_{t-1} + b_t``: ``(h_all [B, T, H, N, P], h_T [B, H, N, P])``."""
    if b.dim() != 5:
        raise ValueError(f"expected b [B, T, H, N, P], got {tuple(b.shape)}")
    B, T, H, N, P = b.shape
    _check(idx, D, B, T, H, N, P, initial_state, P_ste)
    P_m = None if P_ste is None else _hm(P_ste)
    h_all, h_T = _run(_hm(idx), _hm(D), _hm(b), initial_state, impl, chunk_size, P_m, B, H)
    return h_all.unflatten(0, (B, H)).transpose(1, 2), h_T


def perm_diag_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    idx: Tensor,
    D: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "scan",
    chunk_size: int = 64,
    P_ste: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``h_t = P_t D_t h_{t-1} + k_t v_t^T``, ``o_t = Re(h_t^T q_t)``: ``(o [B, T, H, P], h_T)``."""
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k [B, T, H, N] and v [B, T, H, P]; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    B, T, H, N = q.shape
    P = v.shape[-1]
    _check(idx, D, B, T, H, N, P, initial_state, P_ste)
    b = _hm(k)[..., :, None] * _hm(v)[..., None, :]
    P_m = None if P_ste is None else _hm(P_ste)
    h_all, h_T = _run(_hm(idx), _hm(D), b, initial_state, impl, chunk_size, P_m, B, H)
    qh = _hm(q)[..., None]
    if h_all.is_complex() and qh.is_complex():  # Re(h^T q) without forming the complex product
        o = (h_all.real * qh.real - h_all.imag * qh.imag).sum(-2)
    elif h_all.is_complex():
        o = (h_all.real * qh.to(h_all.real.dtype)).sum(-2)
    else:
        o = (h_all * qh.to(h_all.dtype)).sum(-2)
    return o.unflatten(0, (B, H)).transpose(1, 2), h_T
