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
two-sweep chunked scan of ``dense_scan`` (its ``upsweep``, and a PD copy of its ``sweep`` with every
``A x + y`` fused) over ``(idx, D)`` pairs, with a hand-written backward: the adjoint runs the
reversed (gather) recurrence over the same block products. Inside, states are stored transposed
(``[P, N]``, state rows innermost) so that ``A x`` is a ``scatter_add_`` and ``A^H x`` a ``gather``
along the last dimension (several times faster on CPU than moving rows of P numbers). At training
sizes the scan is bound by memory traffic over the per-token states, so the code counts passes. ``P_ste``: an optional dense ``[B, T, H, N, N]`` tensor standing for the one-hot ``P_t``.
Its values are not read; it receives ``dL/dP_t = Re(dL/dA_t * conj(D_t))`` evaluated at the hard
one-hot, i.e. pass the soft relaxation (e.g. a column softmax) to get the straight-through estimator
of the paper (whose released JAX code computes the same ``grad_P`` in its custom VJP).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import pd_scan_triton
from .dense_scan import Trans, chunk_layout, to_chunks, upsweep

IMPLS = ("recurrent", "scan")
SCAN_IMPLS = ("auto", *IMPLS, "triton")  # perm_diag_scan's; "auto": the Triton kernel on CUDA, else scan


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


# -- the scan, in the transposed state layout ---------------------------------------------------
# Inside the scan a state is stored transposed, ``[..., P, N]`` (state rows innermost): the
# scatter-add ``A x`` is then ``scatter_add_`` along the last dimension and the adjoint a ``gather``
# along it, 3-6x faster on CPU than moving rows of ``[..., N, P]`` (``index_add_`` handles one row
# of P numbers at a time). Everything below the public functions uses this layout.


def _index_T(idx: Tensor, x: Tensor) -> Tensor:
    return idx[..., None, :].expand(x.shape)


def _apply_T(tr: Trans, x: Tensor, adjoint: bool = False) -> Tensor:
    """``(A x^T)^T`` / ``(A^H x^T)^T`` for a transposed state ``x [..., P, N]``."""
    idx, D = tr
    if adjoint:
        return x.gather(-1, _index_T(idx, x)) * D.conj()[..., None, :]
    src = x * D[..., None, :]
    return torch.zeros_like(src).scatter_add_(-1, _index_T(idx, src), src)


def _apply_add_T(tr: Trans, x: Tensor, y: Tensor, out: Tensor, adjoint: bool) -> Tensor:
    """``out = A x + y`` (or ``A^H x + y``), fused: ``y`` is copied into ``out`` (which may be a
    strided view) and the transition is scattered / gathered onto it, no zero-filled temporary."""
    idx, D = tr
    out.copy_(y)
    if adjoint:
        return out.addcmul_(x.gather(-1, _index_T(idx, x)), D.conj()[..., None, :])
    src = x * D[..., None, :]
    return out.scatter_add_(-1, _index_T(idx, src), src)


def _pd_sweep(levels, b: Tensor, h0: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """``dense_scan.sweep`` for ``(idx, D)`` transitions on transposed states, with every
    ``A x + y`` fused (``_apply_add_T``) and the down-sweep written straight into its slots of ``E``."""
    L = len(levels) - 1
    M, nc, C = b.shape[:3]
    bl = [b]
    for j in range(L):
        tr, bb = levels[j], bl[-1]
        if reverse:
            tr_j, x, y = tuple(t[:, :, 0::2] for t in tr), bb[:, :, 1::2], bb[:, :, 0::2]
        else:
            tr_j, x, y = tuple(t[:, :, 1::2] for t in tr), bb[:, :, 0::2], bb[:, :, 1::2]
        bl.append(_apply_add_T(tr_j, x, y, torch.empty(y.shape, dtype=b.dtype, device=b.device), reverse))
    E = torch.empty_like(b)
    top, h = levels[L], h0
    for c in reversed(range(nc)) if reverse else range(nc):  # carry across chunks
        E[:, c, C - 1 if reverse else 0] = h
        h = _apply_add_T(tuple(x[:, c, 0] for x in top), h, bl[L][:, c, 0], torch.empty_like(h), reverse)
    for j in reversed(range(L)):
        s, s2 = 1 << j, 1 << (j + 1)
        tr, bb = levels[j], bl[j]
        if reverse:
            tr_j, parent, y, out = (
                tuple(x[:, :, 1::2] for x in tr),
                E[:, :, s2 - 1 :: s2],
                bb[:, :, 1::2],
                E[:, :, s - 1 :: s2],
            )
        else:
            tr_j, parent, y, out = (
                tuple(x[:, :, 0::2] for x in tr),
                E[:, :, ::s2],
                bb[:, :, 0::2],
                E[:, :, s::s2],
            )
        _apply_add_T(tr_j, parent, y, out, reverse)
    return E, h


def _pd_forward(idx: Tensor, D: Tensor, bT: Tensor, h0T: Tensor, chunk_size: int):
    """Block products, ``h_prev`` (transposed state entering each step, ``[M, T, P, N]``) and ``h_T``."""
    M, T, P, N = bT.shape
    C, nc = chunk_layout(T, chunk_size)
    ar = torch.arange(N, device=idx.device)
    levels = upsweep(
        (to_chunks(idx, C, nc, fill=ar), to_chunks(D, C, nc, fill=torch.ones((), dtype=D.dtype))), pd_compose
    )
    E, h_T = _pd_sweep(levels, to_chunks(bT, C, nc), h0T)
    return levels, E.flatten(1, 2)[:, :T], h_T


def _shifted(h_prev: Tensor, h_T: Tensor) -> Tensor:
    """``h_t`` (state after step t) from the states entering each step and the last one (a copy)."""
    return torch.cat([h_prev[:, 1:], h_T[:, None]], dim=1)


def _pd_backward(levels, idx, D, h_prev: Tensor, gT: Tensor | None, g_last: Tensor | None, chunk_size: int):
    """``(G, gh0)`` (transposed): ``G_t = dL/dh_t`` by the reversed gather recurrence over the same
    block products (``Gh_t = A_t^H (g_t + Gh_{t+1})``, ``Gh_T = g_last``, ``G_t = g_t + Gh_{t+1}``)."""
    M, T, P, N = h_prev.shape
    C, nc = chunk_layout(T, chunk_size)
    w = to_chunks(_apply_T((idx, D), gT, adjoint=True), C, nc) if gT is not None else None
    if w is None:
        w = h_prev.new_zeros(M, nc, C, P, N)
    init = g_last if g_last is not None else h_prev.new_zeros(M, P, N)
    E, gh0 = _pd_sweep(levels, w, init, reverse=True)
    G = E.flatten(1, 2)[:, :T]
    if gT is not None:
        G = G + gT
    return G, gh0


def _grads_D_P(G: Tensor, h_prev: Tensor, idx: Tensor, D: Tensor, want_D: bool, want_P: bool):
    """With ``dL/dA_t = G_t h_{t-1}^H``: ``dL/dD_j = dL/dA[idx_j, j] = sum_p G[idx_j, p] conj(h[j, p])``
    (a gather) and the straight-through ``dL/dP = Re(dL/dA * conj(D)) = Re(G (D h)^H)`` as one real
    batched product ``[N, 2P] @ [2P, N]`` (``[M, T, N(row), N(col)]``). ``G, h_prev`` transposed."""
    gD = gP = None
    if want_D:
        gD = (G.gather(-1, _index_T(idx, G)) * h_prev.conj()).sum(-2)
        gD = _real_if(gD, D.is_complex())
    if want_P and not G.is_complex():
        gP = G.mT @ (h_prev * D[..., None, :])
    elif want_P:  # in row layout [N, P] a complex state is a real [N, 2P] view: one real bmm
        Gr = _as_real_rows(G.mT.contiguous())
        Hr = _as_real_rows((h_prev.mT * D[..., :, None]).contiguous())
        gP = Gr @ Hr.mT
    return gD, gP


def _as_real_rows(x: Tensor) -> Tensor:
    """``[..., N, P]`` complex -> ``[..., N, 2P]`` real (interleaved re / im; a view)."""
    return torch.view_as_real(x).flatten(-2) if x.is_complex() else x


def _levels_flat(levels) -> list[Tensor]:
    return [x for lv in levels for x in lv]


def _levels_unflat(saved, n_levels: int):
    return [tuple(saved[2 * j : 2 * j + 2]) for j in range(n_levels)]


class _PDRecurrence(torch.autograd.Function):
    """``(idx, D, b^T [M, T, P, N], h0^T, P_ste) -> (h_all^T, h_T^T)``."""

    @staticmethod
    def forward(ctx, idx: Tensor, D: Tensor, bT: Tensor, h0T: Tensor, P_ste: Tensor | None, chunk_size: int):
        levels, h_prev, h_T = _pd_forward(idx, D, bT, h0T, chunk_size)
        ctx.save_for_backward(*_levels_flat(levels), h_prev, idx, D)
        ctx.meta = (len(levels), P_ste is not None, chunk_size)
        return _shifted(h_prev, h_T), h_T

    @staticmethod
    def backward(ctx, g_all: Tensor | None, g_T: Tensor | None):
        n_levels, has_ste, chunk_size = ctx.meta
        saved = ctx.saved_tensors
        h_prev, idx, D = saved[2 * n_levels :]
        want_D, want_P = ctx.needs_input_grad[1], has_ste and ctx.needs_input_grad[4]
        G, gh0 = _pd_backward(_levels_unflat(saved, n_levels), idx, D, h_prev, g_all, g_T, chunk_size)
        gD, gP = _grads_D_P(G, h_prev, idx, D, want_D, want_P)
        return None, gD, G, gh0, gP, None


def _readout(h_prev: Tensor, h_T: Tensor, q: Tensor) -> Tensor:
    """``Re(q_t^T h_t)`` with ``h_t`` the state after step t: ``h_prev[t + 1]``, and ``h_T`` last."""
    o = torch.empty(q.shape[:2] + h_prev.shape[-2:-1], dtype=h_prev.real.dtype, device=q.device)
    o[:, :-1] = _real_if((h_prev[:, 1:] * q[:, :-1, None, :]).sum(-1), False)
    o[:, -1] = _real_if((h_T * q[:, -1, None, :]).sum(-1), False)
    return o


class _PDScan(torch.autograd.Function):
    """Fused ``(q, k, v, idx, D, h0^T, P_ste) -> (o, h_T^T)`` (head-major ``q, k, idx, D [M, T, N]``,
    ``v [M, T, P]``): ``b_t = k_t v_t^T`` and ``o_t = Re(q_t^T h_t)`` inside, so their gradients are
    products with the states instead of broadcast temporaries through autograd."""

    @staticmethod
    def forward(ctx, q, k, v, idx, D, h0T, P_ste, chunk_size: int, B: int):
        """``P_ste`` stays in the caller's ``[B, T, H, N, N]`` layout (its values are never read)."""
        dtype = h0T.dtype
        bT = (v[..., :, None] * k[..., None, :]).to(dtype)  # [M, T, P, N]
        levels, h_prev, h_T = _pd_forward(idx, D, bT, h0T, chunk_size)
        qd = q.to(dtype)
        o = _readout(h_prev, h_T, qd)
        ctx.save_for_backward(q, k, v, *_levels_flat(levels), h_prev, h_T, idx, D)
        ctx.meta = (len(levels), P_ste is not None, chunk_size, B)
        return o, h_T

    @staticmethod
    def backward(ctx, do: Tensor | None, g_T: Tensor | None):
        n_levels, has_ste, chunk_size, B = ctx.meta
        q, k, v, *rest = ctx.saved_tensors
        h_prev, h_T, idx, D = rest[2 * n_levels :]
        dtype = h_prev.dtype
        need = ctx.needs_input_grad
        # z = q^T h, o = Re z: dL/dh = conj(q) do^T (transposed: do conj(q)^T), dL/dq = conj(h) do
        g = None if do is None else do.to(dtype)[..., :, None] * q.to(dtype).conj()[..., None, :]
        want_D, want_P = need[4], has_ste and need[6]
        G, gh0 = _pd_backward(_levels_unflat(rest, n_levels), idx, D, h_prev, g, g_T, chunk_size)
        gq = gk = gv = None
        if need[0] and do is not None:
            gq = torch.empty(q.shape, dtype=dtype, device=q.device)
            gq[:, :-1] = (h_prev[:, 1:] * do[:, :-1, :, None]).sum(-2)
            gq[:, -1] = (h_T * do[:, -1, :, None]).sum(-2)
            gq = _real_if(gq.conj(), q.is_complex())
        if need[1]:  # b = k v^T: dL/dk = G conj(v), dL/dv = G^T conj(k)
            if G.is_complex() and not k.is_complex() and not v.is_complex():
                gk = (G.real * v[..., :, None]).sum(-2)
            else:
                gk = _real_if((G * v.to(dtype).conj()[..., :, None]).sum(-2), k.is_complex())
        if need[2]:
            if G.is_complex() and not k.is_complex() and not v.is_complex():
                gv = (G.real * k[..., None, :]).sum(-1)
            else:
                gv = _real_if((G * k.to(dtype).conj()[..., None, :]).sum(-1), v.is_complex())
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
    """Head-major core: ``idx, D [B*H, T, N]``, ``b [B*H, T, N, P]`` -> ``(h_all [B*H, T, N, P], h_T [B, H, N, P])``."""
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
        h_all, h_T = _PDRecurrence.apply(idx, D, b.mT, h0.mT, P_ste, chunk_size)
        h_all, h_T = h_all.mT, h_T.mT
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
    impl: str = "auto",
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
    if impl == "auto":  # the Triton kernel (kernels/pd_scan_triton.py) on CUDA where it applies; CPU: scan
        on_gpu = pd_scan_triton.use_triton_by_default(q, k, v, idx, D, initial_state, P_ste)
        impl = "triton" if on_gpu else "scan"
    if impl == "triton":
        return pd_scan_triton.pd_scan_triton(q, k, v, idx, D, initial_state, chunk_size, P_ste)
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
        h0T = (
            q.new_zeros(B * H, P, N, dtype=dtype)
            if initial_state is None
            else initial_state.reshape(B * H, N, P).mT.to(dtype)
        )
        P_m = P_ste if P_ste is not None and P_ste.requires_grad else None
        o, h_T = _PDScan.apply(_hm(q), _hm(k), _hm(v), _hm(idx), _hm(D).to(dtype), h0T, P_m, chunk_size, B)
        h_T = h_T.mT.reshape(B, H, N, P)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(SCAN_IMPLS)}")
    return o.unflatten(0, (B, H)).transpose(1, 2), h_T


def token_cost(N: int, P: int, complex_state: bool = True, ste: bool = True, elem_bytes: int = 4):
    """Per head and token: ``h = P D h + k v^T`` is a row gather / scatter with one (complex) scale per
    row: ``6 N P`` (real: ``N P``) plus ``2 N P`` for the add and ``N P`` for ``k v^T``; the readout
    ``Re(q^T h)`` ``4 N P`` (real: ``2 N P``): a diagonal scan's cost. The straight-through estimator
    adds a dense ``dL/dP = Re(G (D h)^H)`` per token to the backward (``4 N^2 P``; real ``2 N^2 P``)."""
    from .cost import recurrence

    c = 2 if complex_state else 1
    flops = (6 if complex_state else 1) * N * P + 3 * N * P + 2 * c * N * P
    return recurrence(flops, c * N * P, elem_bytes, extra_bwd_flops=2 * c * N * N * P if ste else 0.0)
