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
    """``A x`` (scatter-add) or ``A^H x`` (gather) for ``A = (idx, D)``, ``x [..., N, P]``.

    ``idx, D [..., N]`` and ``x`` share their leading dimensions. Rows of ``x`` move whole: the ops
    are ``index_add_`` / ``index_select`` over the flattened rows (P contiguous numbers each), which
    is several times faster on CPU than an element-wise ``scatter_add`` / ``gather`` along dim -2.
    """
    idx, D = tr
    N, P = x.shape[-2:]
    lead = idx.shape[:-1]
    nb = idx.numel() // N
    rows = (idx.reshape(nb, N) + torch.arange(0, nb * N, N, device=idx.device)[:, None]).reshape(-1)
    if adjoint:
        return x.reshape(nb * N, P).index_select(0, rows).view(*lead, N, P) * D.conj()[..., None]
    src = (D[..., None] * x).reshape(nb * N, P)
    return torch.zeros_like(src).index_add_(0, rows, src).view(*lead, N, P)


def pd_step(idx: Tensor, D: Tensor, h: Tensor, P_ste: Tensor | None = None) -> Tensor:
    """One recurrent step's ``P D h`` with the same straight-through gradient as the scan.

    ``idx, D [..., N]``, ``h [..., N, P]``, ``P_ste [..., N, N]`` (row, col) or None. The forward value
    is ``pd_apply`` (O(N P)); the added ``(P_ste - P_ste.detach()) D h`` is exactly zero but routes
    ``dL/dP = Re(dL/dA * conj(D))`` to ``P_ste``, as ``perm_diag_scan(..., P_ste=...)`` does, so a
    model decoded step by step has the gradient of the model trained with the scan.
    """
    out = pd_apply((idx, D), h)
    if P_ste is not None and P_ste.requires_grad:
        ste = (P_ste - P_ste.detach()).to(out.dtype) * D.to(out.dtype)[..., None, :]
        out = out + ste @ h.to(out.dtype)
    return out


def pd_dense(idx: Tensor, D: Tensor) -> Tensor:
    """The dense ``[..., N, N]`` matrix ``P D`` (for references and tests)."""
    N = idx.shape[-1]
    onehot = torch.nn.functional.one_hot(idx, N).transpose(-1, -2).to(D.dtype)  # [..., row, col]
    return onehot * D[..., None, :]


def _real_if(x: Tensor, complex_wanted: bool) -> Tensor:
    return x.real if x.is_complex() and not complex_wanted else x


def _pd_forward(idx: Tensor, D: Tensor, b: Tensor, h0: Tensor, chunk_size: int):
    """Block products, ``h_prev`` (state entering each step), contiguous ``h_all`` and ``h_T``."""
    M, T, N, P = b.shape
    C, nc = chunk_layout(T, chunk_size)
    ar = torch.arange(N, device=idx.device)
    levels = upsweep(
        (to_chunks(idx, C, nc, fill=ar), to_chunks(D, C, nc, fill=torch.ones((), dtype=D.dtype))), pd_compose
    )
    E, h_T = sweep(levels, to_chunks(b, C, nc), h0, pd_apply)
    h_prev = E.flatten(1, 2)[:, :T]
    return levels, h_prev, torch.cat([h_prev[:, 1:], h_T[:, None]], dim=1), h_T


def _pd_backward(levels, idx, D, h_prev, g: Tensor | None, g_T: Tensor | None, chunk_size: int):
    """``(G, gh0)``: ``G_t = dL/dh_t`` by the reversed gather recurrence over the same block products
    (``Gh_t = A_t^H (g_t + Gh_{t+1})``, ``Gh_T = g_T``, ``G_t = g_t + Gh_{t+1}``)."""
    M, T, N, P = h_prev.shape
    C, nc = chunk_layout(T, chunk_size)
    w = (
        to_chunks(pd_apply((idx, D), g, adjoint=True), C, nc)
        if g is not None
        else h_prev.new_zeros(M, nc, C, N, P)
    )
    init = g_T if g_T is not None else h_prev.new_zeros(M, N, P)
    E, gh0 = sweep(levels, w, init, pd_apply, reverse=True)
    G = E.flatten(1, 2)[:, :T]
    if g is not None:
        G = G + g
    return G, gh0


def _as_real_rows(x: Tensor) -> Tensor:
    """``[..., N, P]`` complex -> ``[..., N, 2P]`` real (interleaved re / im; a view)."""
    return torch.view_as_real(x).flatten(-2) if x.is_complex() else x


def _grads_D_P(G: Tensor, h_prev: Tensor, idx: Tensor, D: Tensor, want_D: bool, want_P: bool):
    """With ``dL/dA_t = G_t h_{t-1}^H``: ``dL/dD_j = dL/dA[idx_j, j] = sum_p G[idx_j, p] conj(h[j, p])``
    (a row gather) and the straight-through ``dL/dP = Re(dL/dA * conj(D)) = Re(G (D h)^H)``, one
    real batched product on interleaved re / im rows (no complex conjugate copies)."""
    gD = gP = None
    if want_D:
        gD = (pd_apply((idx, torch.ones_like(D)), G, adjoint=True) * h_prev.conj()).sum(-1)
        gD = _real_if(gD, D.is_complex())
    if want_P:
        gP = _as_real_rows(G) @ _as_real_rows(D[..., None] * h_prev).mT
    return gD, gP


def _levels_flat(levels) -> list[Tensor]:
    return [x for lv in levels for x in lv]


def _levels_unflat(saved, n_levels: int):
    return [tuple(saved[2 * j : 2 * j + 2]) for j in range(n_levels)]


class _PDRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx: Tensor, D: Tensor, b: Tensor, h0: Tensor, P_ste: Tensor | None, chunk_size: int):
        levels, h_prev, h_all, h_T = _pd_forward(idx, D, b, h0, chunk_size)
        ctx.save_for_backward(*_levels_flat(levels), h_prev, idx, D)
        ctx.meta = (len(levels), P_ste is not None, chunk_size)
        return h_all, h_T

    @staticmethod
    def backward(ctx, g_all: Tensor | None, g_T: Tensor | None):
        n_levels, has_ste, chunk_size = ctx.meta
        saved = ctx.saved_tensors
        h_prev, idx, D = saved[2 * n_levels :]
        want_D, want_P = ctx.needs_input_grad[1], has_ste and ctx.needs_input_grad[4]
        G, gh0 = _pd_backward(_levels_unflat(saved, n_levels), idx, D, h_prev, g_all, g_T, chunk_size)
        gD, gP = _grads_D_P(G, h_prev, idx, D, want_D, want_P)
        return None, gD, G, gh0, gP, None


class _PDScan(torch.autograd.Function):
    """Fused ``(q, k, v, idx, D, h0, P_ste) -> (o, h_T)`` (head-major ``q, k, idx, D [M, T, N]``,
    ``v [M, T, P]``): ``b_t = k_t v_t^T`` and ``o_t = Re(q_t^T h_t)`` inside, so their gradients are
    matrix-vector products instead of broadcast temporaries."""

    @staticmethod
    def forward(ctx, q, k, v, idx, D, h0, P_ste, chunk_size: int, B: int):
        """``P_ste`` stays in the caller's ``[B, T, H, N, N]`` layout (its values are never read)."""
        dtype = h0.dtype
        b = k.to(dtype)[..., :, None] * v[..., None, :]
        levels, h_prev, h_all, h_T = _pd_forward(idx, D, b, h0, chunk_size)
        o = _real_if((q.to(dtype)[..., None, :] @ h_all).squeeze(-2), False)
        ctx.save_for_backward(q, k, v, *_levels_flat(levels), h_prev, h_all, idx, D)
        ctx.meta = (len(levels), P_ste is not None, chunk_size, B)
        return o, h_T

    @staticmethod
    def backward(ctx, do: Tensor | None, g_T: Tensor | None):
        n_levels, has_ste, chunk_size, B = ctx.meta
        q, k, v, *rest = ctx.saved_tensors
        h_prev, h_all, idx, D = rest[2 * n_levels :]
        dtype = h_all.dtype
        need = ctx.needs_input_grad
        # z = q^T h, o = Re z: dL/dz = do, dL/dh = conj(q) do^T, dL/dq = conj(h) do
        g = None if do is None else q.to(dtype).conj()[..., :, None] * do[..., None, :]
        want_D, want_P = need[4], has_ste and need[6]
        G, gh0 = _pd_backward(_levels_unflat(rest, n_levels), idx, D, h_prev, g, g_T, chunk_size)
        gq = gk = gv = None
        if need[0] and do is not None:
            gq = _real_if((h_all.conj() @ do.to(dtype)[..., None]).squeeze(-1), q.is_complex())
        if need[1]:  # b = k v^T: dL/dk = G conj(v), dL/dv = G^T conj(k)
            gk = _real_if((G @ v.to(dtype).conj()[..., None]).squeeze(-1), k.is_complex())
        if need[2]:
            gv = _real_if((G.mT @ k.to(dtype).conj()[..., None]).squeeze(-1), v.is_complex())
        gD, gP = _grads_D_P(G, h_prev, idx, D, want_D, want_P)
        if gP is not None:
            gP = gP.unflatten(0, (B, -1)).transpose(1, 2)
        return gq, gk, gv, None, gD, gh0, gP, None, None


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
    if impl == "recurrent":
        b = _hm(k)[..., :, None] * _hm(v)[..., None, :]
        P_m = None if P_ste is None else _hm(P_ste)
        h_all, h_T = _run(_hm(idx), _hm(D), b, initial_state, impl, chunk_size, P_m, B, H)
        z = (h_all * _hm(q)[..., None].to(h_all.dtype)).sum(-2)
        o = z.real if z.is_complex() else z
    elif impl == "scan":
        dtype = torch.promote_types(torch.promote_types(D.dtype, k.dtype), v.dtype)
        if initial_state is not None:
            dtype = torch.promote_types(dtype, initial_state.dtype)
        h0 = (
            q.new_zeros(B * H, N, P, dtype=dtype)
            if initial_state is None
            else initial_state.reshape(B * H, N, P).to(dtype)
        )
        P_m = P_ste if P_ste is not None and P_ste.requires_grad else None
        o, h_T = _PDScan.apply(_hm(q), _hm(k), _hm(v), _hm(idx), _hm(D).to(dtype), h0, P_m, chunk_size, B)
        h_T = h_T.reshape(B, H, N, P)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    return o.unflatten(0, (B, H)).transpose(1, 2), h_T
