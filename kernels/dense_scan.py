"""Dense matrix-state linear recurrence ``h_t = A_t h_{t-1} + b_t``, ``o_t = h_t^T q_t``.

Layout: ``A [B, T, H, N, N]``, ``b [B, T, H, N, P]``, ``q, k [B, T, H, N]``, ``v [B, T, H, P]``,
state ``h [B, H, N, P]``. Real or complex ``A``/``b`` (the recurrence only; the ``q`` readout is real).

``impl="recurrent"`` is the reference loop. ``impl="chunk"`` is a work-efficient two-sweep scan
(Blelloch's up-sweep / down-sweep) inside chunks of ``chunk_size`` (rounded up to a power of two)
and a carried state across chunks:

- up-sweep: pair neighbours level by level, ``(A_2 A_1, A_2 b_1 + b_2)``: ``log2(C)`` levels, ``C - 1``
  matrix products per chunk in total (Hillis-Steele would do ``C log2 C``; on CPU the work is what
  counts, the depth is already tiny);
- across chunks: one ``[N, N] @ [N, P]`` product per chunk carries the state (loop over ``T / C``);
- down-sweep: from each block's entering state, the state entering its right half is
  ``A_left h + b_left``: ``log2(C)`` levels, ``C - 1`` matrix-vector(-block) products per chunk.

The entering state of step ``t`` is ``h_{t-1}``, so every ``h_t`` falls out without a last product.
Memory is ``O(T N (N + P))`` (the up-sweep levels sum to the input size).

The backward pass is written by hand (``torch.autograd.Function``): with ``G_t = dL/dh_t`` and
``Gh_t = A_t^H G_t``, the adjoint obeys the reversed recurrence ``Gh_t = A_t^H (g_t + Gh_{t+1})``
over the same aligned blocks, so the backward reuses the forward's block products (conjugate-
transposed) and costs only matrix-times-state products; then ``dL/dA_t = G_t h_{t-1}^H`` and
``dL/db_t = G_t``. Half-precision inputs are computed in float32 and cast back (products of up
to ``C`` matrices are not safe in bf16 / fp16).

``upsweep`` / ``sweep`` are generic in the transition representation (``compose`` / ``apply``
callables) and are reused by ``perm_diag_scan`` for the index-gather transitions of PD-SSM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

IMPLS = ("recurrent", "chunk")

Trans = tuple[Tensor, ...]  # a transition representation: one or more tensors [M, ..., time, ...]
Compose = Callable[[Trans, Trans], Trans]  # compose(later, earlier) = later o earlier
Apply = Callable[[Trans, Tensor, bool], Tensor]  # apply(tr, x, adjoint) = A x or A^H x


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def chunk_layout(T: int, chunk_size: int) -> tuple[int, int]:
    """``(C, nc)``: the power-of-two chunk length used for ``T`` steps and the number of chunks."""
    C = min(_pow2_at_least(chunk_size), _pow2_at_least(T))
    return C, -(-T // C)


def to_chunks(x: Tensor, C: int, nc: int, fill: Tensor | None = None) -> Tensor:
    """``[M, T, ...] -> [M, nc, C, ...]``, padding the tail with ``fill`` (broadcast) or zeros."""
    M, T = x.shape[:2]
    pad = nc * C - T
    if pad:
        tail = x.new_zeros(M, pad, *x.shape[2:]) if fill is None else fill.expand(M, pad, *x.shape[2:])
        x = torch.cat([x, tail.to(x.dtype)], dim=1)
    return x.reshape(M, nc, C, *x.shape[2:])


def upsweep(trans: Trans, compose: Compose) -> list[Trans]:
    """Block products of the transitions ``[M, nc, C, ...]``: ``levels[j]`` holds the products of
    aligned blocks of ``2^j`` steps (``C / 2^j`` per chunk), later block times earlier block."""
    levels = [trans]
    while levels[-1][0].shape[2] > 1:
        tr = levels[-1]
        levels.append(compose(tuple(x[:, :, 1::2] for x in tr), tuple(x[:, :, 0::2] for x in tr)))
    return levels


def sweep(
    levels: list[Trans], b: Tensor, h0: Tensor, apply: Apply, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """The value entering every step of ``h_t = A_t h_{t-1} + b_t``, from the block products ``levels``.

    ``b [M, nc, C, N, P]``, ``h0 [M, N, P]``; returns ``(E [M, nc, C, N, P], h_end)``.

    Forward (``reverse=False``): ``E[.., t] = h_{t-1}`` (``h0`` at 0) and ``h_end`` the last state.

    ``reverse=True`` runs the adjoint recurrence ``g_t = A_t^H g_{t+1} + b_t`` from the end (``h0`` is
    the value after the last step) with the same block products conjugate-transposed (blocks are
    aligned in both directions, so the backward pass reuses the forward up-sweep):
    ``E[.., t] = g_{t+1}`` and ``h_end = g_0``. ``apply(tr, x, adjoint)`` is ``A x`` / ``A^H x``.

    The down-sweep writes every level straight into its strided slots of ``E`` (the value entering a
    block of ``2^j`` steps is the value entering its first step), so no level is interleaved or copied.
    """
    L = len(levels) - 1
    M, nc, C = b.shape[:3]
    bl = [b]  # up-sweep of the inhomogeneous part
    for j in range(L):
        tr, bb = levels[j], bl[-1]
        if reverse:  # the right (later) block is processed first
            bl.append(apply(tuple(x[:, :, 0::2] for x in tr), bb[:, :, 1::2], True).add_(bb[:, :, 0::2]))
        else:
            bl.append(apply(tuple(x[:, :, 1::2] for x in tr), bb[:, :, 0::2], False).add_(bb[:, :, 1::2]))
    E = torch.empty_like(b)  # E[:, c, s]: the value entering step s of chunk c
    top, h = levels[L], h0
    for c in reversed(range(nc)) if reverse else range(nc):  # carry across chunks
        E[:, c, C - 1 if reverse else 0] = h
        h = apply(tuple(x[:, c, 0] for x in top), h, reverse) + bl[L][:, c, 0]
    for j in reversed(range(L)):  # down-sweep: level j+1 entering values -> level j
        s, s2 = 1 << j, 1 << (j + 1)
        tr, bb = levels[j], bl[j]
        if reverse:  # a block is entered at its last step; the left child after the right one
            parent = E[:, :, s2 - 1 :: s2]
            E[:, :, s - 1 :: s2] = apply(tuple(x[:, :, 1::2] for x in tr), parent, True).add_(bb[:, :, 1::2])
        else:  # a block is entered at its first step; the right child after the left one
            parent = E[:, :, ::s2]
            E[:, :, s::s2] = apply(tuple(x[:, :, 0::2] for x in tr), parent, False).add_(bb[:, :, 0::2])
    return E, h


def _bmm_add(A: Tensor, x: Tensor, y: Tensor, adjoint: bool) -> Tensor:
    """``A x + y`` (or ``A^H x + y``) in one ``baddbmm`` over the flattened leading dimensions
    (the strided level slices flatten to views), instead of a product, a temporary and an add."""
    lead = x.shape[:-2]
    A3 = (A.mH if adjoint else A).flatten(0, len(lead) - 1) if len(lead) > 1 else (A.mH if adjoint else A)
    x3 = x.flatten(0, len(lead) - 1) if len(lead) > 1 else x
    y3 = y.flatten(0, len(lead) - 1) if len(lead) > 1 else y
    return torch.baddbmm(y3, A3, x3).view(*lead, *y.shape[-2:])


def dense_sweep(prods: list[Tensor], b: Tensor, h0: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """``sweep`` for dense transitions (``prods[j] [M, nc, C / 2^j, N, N]``) with every ``A x + b`` a
    single ``baddbmm``: the same values, two fewer passes over the states per level."""
    L = len(prods) - 1
    M, nc, C = b.shape[:3]
    bl = [b]
    for j in range(L):
        A, bb = prods[j], bl[-1]
        if reverse:
            bl.append(_bmm_add(A[:, :, 0::2], bb[:, :, 1::2], bb[:, :, 0::2], True))
        else:
            bl.append(_bmm_add(A[:, :, 1::2], bb[:, :, 0::2], bb[:, :, 1::2], False))
    E = torch.empty_like(b)
    top, h = prods[L], h0
    for c in reversed(range(nc)) if reverse else range(nc):
        E[:, c, C - 1 if reverse else 0] = h
        h = _bmm_add(top[:, c, 0], h, bl[L][:, c, 0], reverse)
    for j in reversed(range(L)):
        s, s2 = 1 << j, 1 << (j + 1)
        A, bb = prods[j], bl[j]
        if reverse:
            E[:, :, s - 1 :: s2] = _bmm_add(A[:, :, 1::2], E[:, :, s2 - 1 :: s2], bb[:, :, 1::2], True)
        else:
            E[:, :, s::s2] = _bmm_add(A[:, :, 0::2], E[:, :, ::s2], bb[:, :, 0::2], False)
    return E, h


# -- dense transitions -------------------------------------------------------------------------


def _dense_compose(later: Trans, earlier: Trans) -> Trans:
    return (later[0] @ earlier[0],)


def _dense_apply(tr: Trans, x: Tensor, adjoint: bool) -> Tensor:
    return (tr[0].mH if adjoint else tr[0]) @ x


def _dense_forward(A: Tensor, b: Tensor, h0: Tensor, chunk_size: int):
    """Block products (saved for the backward), ``h_prev [M, T, N, P]`` (state entering each step)
    and ``h_T``."""
    M, T, N, P = b.shape
    C, nc = chunk_layout(T, chunk_size)
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    prods = [lv[0] for lv in upsweep((to_chunks(A, C, nc, fill=eye),), _dense_compose)]
    E, h_T = dense_sweep(prods, to_chunks(b, C, nc), h0)
    return prods, E.flatten(1, 2)[:, :T], h_T


def _after(h_prev: Tensor, h_T: Tensor) -> Tensor:
    """``h_t`` (state after step t) from the states entering each step and the last one (a copy)."""
    return torch.cat([h_prev[:, 1:], h_T[:, None]], dim=1)


def _dense_backward(prods: list[Tensor], g: Tensor | None, g_last: Tensor | None, M, T, N, P, C, nc):
    """``(G, Gh_0)``: ``G_t = dL/dh_t`` from the direct gradients ``g`` of the states and ``g_last``
    of the final state. With ``Gh_t = A_t^H G_t``: ``Gh_t = A_t^H (g_t + Gh_{t+1})``, ``Gh_T = g_last``
    (a reversed recurrence over the same aligned blocks), then ``G_t = g_t + Gh_{t+1}``."""
    A = prods[0].flatten(1, 2)[:, :T]
    dtype, device = prods[0].dtype, prods[0].device
    w = to_chunks(A.mH @ g, C, nc) if g is not None else prods[0].new_zeros(M, nc, C, N, P)
    init = g_last if g_last is not None else torch.zeros(M, N, P, dtype=dtype, device=device)
    E, gh0 = dense_sweep(prods, w, init, reverse=True)
    G = E.flatten(1, 2)[:, :T]
    if g is not None:
        G = G + g
    return G, gh0


class _DenseRecurrence(torch.autograd.Function):
    """``(A [M,T,N,N], b [M,T,N,P], h0 [M,N,P]) -> (h_all, h_T)`` with the adjoint-scan backward."""

    @staticmethod
    def forward(ctx, A: Tensor, b: Tensor, h0: Tensor, chunk_size: int):
        M, T, N, P = b.shape
        prods, h_prev, h_T = _dense_forward(A, b, h0, chunk_size)
        ctx.save_for_backward(*prods, h_prev)
        ctx.shape = (M, T, N, P, *chunk_layout(T, chunk_size))
        return _after(h_prev, h_T), h_T

    @staticmethod
    def backward(ctx, g_all: Tensor | None, g_T: Tensor | None):
        *prods, h_prev = ctx.saved_tensors
        G, gh0 = _dense_backward(prods, g_all, g_T, *ctx.shape)
        gA = G @ h_prev.mH if ctx.needs_input_grad[0] else None
        return gA, G, gh0, None


class _DenseScan(torch.autograd.Function):
    """Fused ``(q, k, v, A, h0) -> (o, h_T)``, all head-major (``q, k [M,T,N]``, ``v [M,T,P]``):
    ``b_t = k_t v_t^T`` and ``o_t = h_t^T q_t`` inside, so their gradients are matrix-vector products
    (``dq_t = h_t do_t``, ``dk_t = G_t v_t``, ``dv_t = G_t^T k_t``) instead of broadcast temporaries."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, A: Tensor, h0: Tensor, chunk_size: int):
        M, T, N = q.shape
        P = v.shape[-1]
        b = k[..., :, None] * v[..., None, :]
        prods, h_prev, h_T = _dense_forward(A, b, h0, chunk_size)
        o = torch.empty(M, T, P, dtype=h_T.dtype, device=h_T.device)  # o_t = h_t^T q_t, h_t = h_prev[t + 1]
        o[:, :-1] = (h_prev[:, 1:] * q[:, :-1, :, None]).sum(-2)
        o[:, -1] = (h_T * q[:, -1, :, None]).sum(-2)
        ctx.save_for_backward(q, k, v, *prods, h_prev, h_T)
        ctx.shape = (M, T, N, P, *chunk_layout(T, chunk_size))
        return o, h_T

    @staticmethod
    def backward(ctx, do: Tensor | None, g_T: Tensor | None):
        q, k, v, *prods, h_prev, h_T = ctx.saved_tensors
        g = None if do is None else q[..., :, None] * do[..., None, :]
        G, gh0 = _dense_backward(prods, g, g_T, *ctx.shape)
        need = ctx.needs_input_grad
        gq = None
        if need[0] and do is not None:  # dq_t = h_t do_t
            gq = torch.empty_like(q)
            gq[:, :-1] = (h_prev[:, 1:] @ do[:, :-1, :, None]).squeeze(-1)
            gq[:, -1] = (h_T @ do[:, -1, :, None]).squeeze(-1)
        gk = (G @ v[..., None]).squeeze(-1) if need[1] else None
        gv = (G * k[..., :, None]).sum(-2) if need[2] else None
        gA = G @ h_prev.mH if need[3] else None
        return gq, gk, gv, gA, gh0, None


def _check(A: Tensor, b: Tensor, h0: Tensor | None) -> None:
    if A.dim() != 5 or b.dim() != 5 or A.shape[-1] != A.shape[-2] or A.shape[:4] != b.shape[:4]:
        raise ValueError(
            f"expected A [B, T, H, N, N] and b [B, T, H, N, P] with matching B, T, H, N; got A "
            f"{tuple(A.shape)}, b {tuple(b.shape)}"
        )
    B, _, H, N, P = b.shape
    if h0 is not None and tuple(h0.shape) != (B, H, N, P):
        raise ValueError(f"initial_state must be [B, H, N, P] = {(B, H, N, P)}, got {tuple(h0.shape)}")


def _head_major(x: Tensor) -> Tensor:
    """``[B, T, H, ...] -> [B*H, T, ...]`` (a view when ``x`` is a transposed head-major tensor)."""
    return x.transpose(1, 2).flatten(0, 1)


def linear_recurrence_dense(
    A: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """``h_t = A_t h_{t-1} + b_t``: returns ``(h_all [B, T, H, N, P], h_T [B, H, N, P])``.

    The work is done head-major (``[B, H, T, ...]``): pass ``A`` as ``A_hm.transpose(1, 2)`` of a
    contiguous head-major tensor to avoid a copy.
    """
    _check(A, b, initial_state)
    B, T, H, N, P = b.shape
    h_all, h_T = _recurrence_hm(_head_major(A), _head_major(b), initial_state, impl, chunk_size, B, H)
    return h_all.unflatten(0, (B, H)).transpose(1, 2), h_T


def _recurrence_hm(
    A: Tensor, b: Tensor, initial_state: Tensor | None, impl: str, chunk_size: int, B: int, H: int
) -> tuple[Tensor, Tensor]:
    """Head-major core: ``A [B*H, T, N, N]``, ``b [B*H, T, N, P]`` -> ``(h_all [B*H, T, N, P], h_T)``."""
    M, T, N, P = b.shape
    dtype = torch.promote_types(A.dtype, b.dtype)
    if initial_state is not None:
        dtype = torch.promote_types(dtype, initial_state.dtype)
    h0 = b.new_zeros(M, N, P, dtype=dtype) if initial_state is None else initial_state.reshape(M, N, P)
    if impl == "recurrent":
        h_all, h_T = _recurrent(A.to(dtype), b.to(dtype), h0.to(dtype))
    elif impl == "chunk":
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        h_all, h_T = _DenseRecurrence.apply(A.to(work), b.to(work), h0.to(work), chunk_size)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    return h_all.to(dtype), h_T.reshape(B, H, N, P).to(dtype)


def _recurrent(A: Tensor, b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    outs = []
    for t in range(b.shape[1]):
        h = A[:, t] @ h + b[:, t]
        outs.append(h)
    return torch.stack(outs, dim=1), h


def dense_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    A: Tensor,
    initial_state: Tensor | None = None,
    impl: str = "chunk",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """``h_t = A_t h_{t-1} + k_t v_t^T``, ``o_t = h_t^T q_t``: returns ``(o [B, T, H, P], h_T)``.

    ``q, k [B, T, H, N]``, ``v [B, T, H, P]``, ``A [B, T, H, N, N]`` (real; see
    ``linear_recurrence_dense`` for the head-major tip).
    """
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3] or A.shape[:4] != q.shape:
        raise ValueError(
            f"expected q, k [B, T, H, N], v [B, T, H, P], A [B, T, H, N, N]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}, A {tuple(A.shape)}"
        )
    B, T, H, N = q.shape
    P = v.shape[-1]
    if initial_state is not None and tuple(initial_state.shape) != (B, H, N, P):
        raise ValueError(
            f"initial_state must be [B, H, N, P] = {(B, H, N, P)}, got {tuple(initial_state.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.promote_types(v.dtype, A.dtype))
    if initial_state is not None:
        dtype = torch.promote_types(dtype, initial_state.dtype)
    if impl == "recurrent":
        b = _head_major(k)[..., :, None] * _head_major(v)[..., None, :]
        h_all, h_T = _recurrence_hm(_head_major(A), b, initial_state, impl, chunk_size, B, H)
        o = (h_all * _head_major(q)[..., None].to(h_all.dtype)).sum(-2)
    elif impl == "chunk":
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        h0 = (
            q.new_zeros(B * H, N, P, dtype=work)
            if initial_state is None
            else initial_state.reshape(B * H, N, P)
        )
        qh, kh, vh, Ah = (_head_major(x).to(work) for x in (q, k, v, A))
        o, h_T = _DenseScan.apply(qh, kh, vh, Ah, h0.to(work), chunk_size)
        o, h_T = o.to(dtype), h_T.reshape(B, H, N, P).to(dtype)
    else:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    return o.unflatten(0, (B, H)).transpose(1, 2), h_T


def token_cost(N: int, P: int, elem_bytes: int = 4):
    """Per head and token: ``h = A h + k v^T`` (``2 N^2 P + 2 N P``) and ``h^T q`` (``2 N P``): the
    ``O(N^2)`` ceiling of the transitions group. State ``N P``."""
    from .cost import recurrence

    return recurrence(2 * N * N * P + 4 * N * P, N * P, elem_bytes)
