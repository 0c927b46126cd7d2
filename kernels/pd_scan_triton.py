"""PD-SSM scan as a Triton kernel: ``h_t = P_t D_t h_{t-1} + k_t v_t^T``, ``o_t = Re(q_t^T h_t)``.

The algebra (kernels/perm_diag_scan.py): ``A_t = P_t D_t`` has one entry per column, ``D_t[j]`` at
row ``idx_t[j]``, so ``A_t h`` costs ``O(N P)`` per token, not ``O(N^2 P)``: scale every state row
``j`` by ``D_t[j]`` and add it onto row ``idx_t[j]``. The kernel runs that recurrence directly, one
token after the other, with the state in registers.

Layout and launch. One program per (batch, head, block of ``BLOCK_P`` value columns): the columns
of the state ``h [N, P]`` never mix (``A_t`` acts on the rows), so a program owns ``[N, BLOCK_P]``
complex numbers and loops over time; ``q, k, idx, D [B, T, H, N]``, ``v [B, T, H, P]`` and
``o [B, T, H, P]`` are read and written in place through their strides (complex tensors as the
re / im planes of ``torch.view_as_real``, no copies). ``N`` is padded to ``BLOCK_N`` (a power of two,
at least 16) with inert rows: ``idx = own row``, ``D = 0``.

The scatter-add in registers. Triton has a register ``gather`` but no ``scatter``. Rows that several
columns land on are summed in *levels*: column ``j``'s level is the number of earlier columns with
the same target row (its rank); level ``l`` is a gather (row ``i`` pulls the column of rank ``l``
that targets it, if any), so ``A_t h = sum_l gather_l(D_t h)``. A permutation has one level;
``L_t`` levels cost ``L_t`` gathers of ``N x BLOCK_P`` complex numbers, plus ``O(N^2)`` integer
compares per token to rank the columns (independent of ``P``). The worst case (every column on one
row, ``L = N``) is the dense ``O(N^2 P)``. Within a row the columns are added in increasing ``j``:
deterministic, the order of a sequential scatter-add.

Backward (a ``torch.autograd.Function``, both passes in Triton). The adjoint ``A_t^H g`` is a plain
gather, ``(A^H g)[j] = conj(D[j]) g[idx[j]]``. The forward saves the state at the start of every
chunk of ``chunk_size`` tokens (``T / chunk_size`` states, not ``T``); the backward walks the chunks
last to first: it recomputes the chunk's states from its checkpoint into a per-program scratch
buffer (global memory, ``(chunk_size + 1) N BLOCK_P`` complex numbers, L2-resident at training
sizes), then sweeps the chunk in reverse with ``G_t = dL/dh_t = conj(q_t) do_t^T + A_{t+1}^H G_{t+1}``
and forms ``dq, dk, dv, dD`` and, when ``P_ste`` is given, the straight-through
``dL/dP_t = Re(G_t (D_t h_{t-1})^H)`` (a dense ``N x N`` product per token, ``tl.dot``: the STE's
own cost). Gradients that sum over the value columns (``dq, dk, dD, dP``) are written per
``BLOCK_P`` block and summed by torch when ``P > BLOCK_P``.

Precision and scope: float32 / complex64 only (float64 runs the torch ``scan``); computed in
float32 (``tl.dot`` with ``input_precision="ieee"``, no TF32). The state is complex in the kernel:
real ``q``, ``k``, ``v`` skip their imaginary terms, but a real ``D`` and ``h0`` (a real state, as
gs-monomial's) still pay for the zero imaginary parts. ``idx`` must hold row indices in ``[0, N)``:
unlike the torch paths, an out-of-range index is not detected (the gather would read undefined
values). ``perm_diag_scan(impl="auto")``, its default, takes this kernel for CUDA tensors it
supports and the torch ``scan`` otherwise (never on CPU); ``pd_recurrence`` (every state out) has no
Triton form. Tested under ``TRITON_INTERPRET=1`` (tests/test_kernels_triton.py);
scripts/gpu-kernels-check checks and times it on a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .cost import TokenCost

try:  # the package must import without triton (kernels/fused_gate.py, convention 1)
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency on linux, absent elsewhere
    triton = None
    tl = None
    HAS_TRITON = False

FLOAT_DTYPES = (torch.float32, torch.complex64)
INDEX_DTYPES = (torch.int64, torch.int32)


def triton_usable(*tensors: Tensor | None) -> bool:
    """True where the Triton PD scan can run on these tensors: triton installed, float32 / complex64
    floats, and CUDA (or CPU tensors with ``TRITON_INTERPRET=1`` set before triton was imported)."""
    ts = [t for t in tensors if t is not None]
    if not HAS_TRITON or not ts:
        return False
    if any(t.dtype not in FLOAT_DTYPES + INDEX_DTYPES for t in ts):
        return False
    if all(t.is_cuda for t in ts):
        return True
    return os.environ.get("TRITON_INTERPRET") == "1" and not any(t.is_cuda for t in ts)


def use_triton_by_default(*tensors: Tensor | None) -> bool:
    """``impl="auto"``: the kernel on CUDA tensors it supports; never on CPU."""
    ts = [t for t in tensors if t is not None]
    return bool(ts) and all(t.is_cuda for t in ts) and triton_usable(*ts)


def _check_usable(*tensors: Tensor | None) -> None:
    if not HAS_TRITON:
        raise RuntimeError("impl='triton' needs the triton package, which is not installed")
    for t in tensors:
        if t is not None and t.dtype not in FLOAT_DTYPES + INDEX_DTYPES:
            raise RuntimeError(
                f"impl='triton' supports float32 / complex64 (and int64 / int32 indices), got {t.dtype}; "
                "use impl='scan'"
            )
    if not triton_usable(*tensors):
        raise RuntimeError(
            "impl='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before triton "
            f"is imported); got devices {sorted({str(t.device) for t in tensors if t is not None})}"
        )


def _empty(shape, dtype, device) -> Tensor:
    """Every buffer the kernels write (outputs, checkpoints, scratch, gradients) comes from here, so
    a test can hand out poisoned memory and catch an element the kernel fails to write."""
    return torch.empty(shape, dtype=dtype, device=device)


def _planes(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(re, im)`` float views of ``x`` sharing its strides (``im`` None for a real tensor)."""
    if not x.is_complex():
        return x, None
    r = torch.view_as_real(x.resolve_conj())
    return r[..., 0], r[..., 1]


def _block(n: int, cap: int | None = None) -> int:
    b = max(16, triton.next_power_of_2(max(n, 1)))
    return b if cap is None else min(b, max(16, cap))


def _strides4(x: Tensor) -> tuple[int, int, int, int]:
    return tuple(x.stride())  # type: ignore[return-value]


def _as_complex(re: Tensor, im: Tensor | None, want_complex: bool) -> Tensor:
    if not want_complex:
        return re
    return torch.complex(re, im if im is not None else torch.zeros_like(re))


def _launch_forward(q, k, v, idx, D, h0, chunk_size: int, block_p: int, save: bool):
    """``(o [B, T, H, P] float32, hT_re, hT_im [B*H, N, P], ck_re, ck_im [B*H, nc, N, P] or None)``."""
    B, T, H, N = q.shape
    P = v.shape[-1]
    dev = q.device
    M, nc = B * H, triton.cdiv(T, chunk_size)
    BN, BP = _block(N), _block(P, block_p)
    (qr, qi), (kr, ki), (vr, vi), (dr, di) = (_planes(x) for x in (q, k, v, D))
    o = _empty((B, T, H, P), torch.float32, dev)
    hT_re, hT_im = _empty((M, N, P), torch.float32, dev), _empty((M, N, P), torch.float32, dev)
    if save:
        ck_re, ck_im = (_empty((M, nc, N, P), torch.float32, dev) for _ in range(2))
    else:
        ck_re = ck_im = hT_re  # dummies, never written when SAVE is False
    if h0 is not None:
        h0c = h0.to(torch.complex64).reshape(M, N, P)
        h0_re, h0_im = h0c.real.contiguous(), h0c.imag.contiguous()
    else:
        h0_re = h0_im = hT_re  # dummies, never read when HAS_H0 is False
    grid = (M, triton.cdiv(P, BP))
    _pd_fwd_kernel[grid](
        qr, qi if qi is not None else qr,
        kr, ki if ki is not None else kr,
        vr, vi if vi is not None else vr,
        idx,
        dr, di if di is not None else dr,
        h0_re, h0_im,
        o, hT_re, hT_im, ck_re, ck_im,
        T, N, P, H, nc,
        *_strides4(qr), *_strides4(kr), *_strides4(vr), *_strides4(idx), *_strides4(dr), *_strides4(o),
        Q_IM=qi is not None, K_IM=ki is not None, V_IM=vi is not None,
        KV_IM=ki is not None or vi is not None, D_IM=di is not None,
        HAS_H0=h0 is not None, SAVE=save, CHUNK=chunk_size, BLOCK_N=BN, BLOCK_P=BP,
    )  # fmt: skip
    return o, hT_re, hT_im, (ck_re, ck_im) if save else None


def _launch_backward(q, k, v, idx, D, ck, do, gT, has_ste: bool, chunk_size: int, block_p: int):
    """Complex gradient planes ``(dq, dk, dv, dD, dh0, dP)`` (each ``(re, im)``; ``dP`` real or None)."""
    B, T, H, N = q.shape
    P = v.shape[-1]
    dev = q.device
    M, nc = B * H, triton.cdiv(T, chunk_size)
    BN, BP = _block(N), _block(P, block_p)
    npb = triton.cdiv(P, BP)
    (qr, qi), (kr, ki), (vr, vi), (dr, di) = (_planes(x) for x in (q, k, v, D))
    f32 = torch.float32
    dq = [_empty((npb, B, T, H, N), f32, dev) for _ in range(2)]
    dk = [_empty((npb, B, T, H, N), f32, dev) for _ in range(2)]
    dD = [_empty((npb, B, T, H, N), f32, dev) for _ in range(2)]
    dv = [_empty((B, T, H, P), f32, dev) for _ in range(2)]
    dh0 = [_empty((M, N, P), f32, dev) for _ in range(2)]
    dP = _empty((npb, B, T, H, N, N), f32, dev) if has_ste else dh0[0]
    scratch = [_empty((M * npb, chunk_size + 1, BN, BP), f32, dev) for _ in range(2)]
    do = do if do is not None else torch.zeros(B, T, H, P, dtype=f32, device=dev)
    if gT is not None:
        gTc = gT.to(torch.complex64).reshape(M, N, P)
        g_re, g_im = gTc.real.contiguous(), gTc.imag.contiguous()
    else:
        g_re = g_im = dh0[0]  # dummies, never read when HAS_GT is False
    _pd_bwd_kernel[(M, npb)](
        qr, qi if qi is not None else qr,
        kr, ki if ki is not None else kr,
        vr, vi if vi is not None else vr,
        idx,
        dr, di if di is not None else dr,
        ck[0], ck[1], do, g_re, g_im, scratch[0], scratch[1],
        dq[0], dq[1], dk[0], dk[1], dv[0], dv[1], dD[0], dD[1], dh0[0], dh0[1], dP,
        T, N, P, H, nc, B * T * H * N, B * T * H * N * N,
        *_strides4(qr), *_strides4(kr), *_strides4(vr), *_strides4(idx), *_strides4(dr), *_strides4(do),
        Q_IM=qi is not None, K_IM=ki is not None, V_IM=vi is not None,
        KV_IM=ki is not None or vi is not None, D_IM=di is not None,
        HAS_GT=gT is not None, HAS_STE=has_ste, CHUNK=chunk_size, BLOCK_N=BN, BLOCK_P=BP,
    )  # fmt: skip
    red = lambda x: x[0] if npb == 1 else x.sum(0)  # noqa: E731  (sum of the per-block partials)
    return (
        (red(dq[0]), red(dq[1])),
        (red(dk[0]), red(dk[1])),
        (dv[0], dv[1]),
        (red(dD[0]), red(dD[1])),
        (dh0[0].view(B, H, N, P), dh0[1].view(B, H, N, P)),
        red(dP) if has_ste else None,
    )


class _PDScanTriton(torch.autograd.Function):
    """``(q, k, v, idx, D, h0, P_ste) -> (o, h_T)``: Triton forward, Triton reverse-time backward."""

    @staticmethod
    def forward(ctx, q, k, v, idx, D, h0, P_ste, chunk_size: int, block_p: int, save: bool):
        B, T, H, N = q.shape
        P = v.shape[-1]
        o, hT_re, hT_im, ck = _launch_forward(q, k, v, idx, D, h0, chunk_size, block_p, save)
        state_complex = any(x is not None and x.is_complex() for x in (k, v, D, h0))
        hT = _as_complex(hT_re, hT_im, state_complex).view(B, H, N, P)
        if save:
            ctx.save_for_backward(q, k, v, idx, D, *ck)
        ctx.meta = (chunk_size, block_p, P_ste is not None, h0 is not None and h0.is_complex(), save)
        return o, hT

    @staticmethod
    def backward(ctx, do: Tensor | None, gT: Tensor | None):
        chunk_size, block_p, has_ste, h0_complex, save = ctx.meta
        if not save:
            raise RuntimeError("the Triton PD scan ran without saving checkpoints; no backward")
        q, k, v, idx, D, ck_re, ck_im = ctx.saved_tensors
        need = ctx.needs_input_grad
        do = None if do is None else do.float()
        dq, dk, dv, dD, dh0, dP = _launch_backward(
            q, k, v, idx, D, (ck_re, ck_im), do, gT, has_ste and need[6], chunk_size, block_p
        )
        out = lambda g, x: _as_complex(g[0], g[1], x.is_complex()) if x is not None else None  # noqa: E731
        return (
            out(dq, q) if need[0] else None,
            out(dk, k) if need[1] else None,
            out(dv, v) if need[2] else None,
            None,
            out(dD, D) if need[4] else None,
            _as_complex(dh0[0], dh0[1], h0_complex) if need[5] else None,
            dP if need[6] else None,
            None,
            None,
            None,
        )


def pd_scan_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    idx: Tensor,
    D: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    P_ste: Tensor | None = None,
    block_p: int = 64,
) -> tuple[Tensor, Tensor]:
    """``perm_diag_scan(..., impl="triton")`` (shapes checked there): ``(o [B, T, H, P], h_T [B, H, N, P])``.

    ``chunk_size`` is the interval between the states the forward saves for the backward;
    ``block_p`` caps the value columns per program (a power of two, at least 16).
    """
    _check_usable(q, k, v, idx, D, initial_state, P_ste)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if P_ste is not None and not P_ste.requires_grad:
        P_ste = None
    leaves = (q, k, v, D, initial_state, P_ste)
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in leaves)
    return _PDScanTriton.apply(q, k, v, idx, D, initial_state, P_ste, chunk_size, block_p, save)


def token_cost(N: int, P: int, chunk_size: int = 64, ste: bool = True, levels: float = 1.0) -> TokenCost:
    """Per head and token, what this kernel does for the pd-ssm candidate's operands (complex ``q, D``,
    real ``k, v``; ``levels``: mean gathers per token, 1 for a permutation).

    FLOPs. Forward: ``D h`` (6 N P), a complex add per extra level (2 N P each), ``k v^T`` onto the
    real part (2 N P), readout ``Re(q^T h)`` (4 N P): ``12 N P`` for a permutation (the torch
    module's count is 13: it adds ``k v^T`` as a complex product). Backward: the recompute (the
    forward less the readout), ``G`` (4 N P), ``dq`` (4 N P), ``dk, dv`` (2 N P each), ``dD``
    (8 N P), the adjoint ``conj(D) G[idx]`` (6 N P); the STE adds ``D h_{t-1}`` (6 N P) and the dense
    ``Re(G (D h)^H)`` (``4 N^2 P``). The ``O(N^2)`` integer work that ranks colliding columns is not
    counted. Bytes are HBM traffic, not state traffic (the state stays in registers): forward reads
    ``q, D`` (complex), ``k, v`` (real), ``idx`` (int64), writes ``o`` and a checkpoint every
    ``chunk_size`` tokens; backward reads the inputs in the recompute (not ``q``) and in the sweep,
    ``do`` and the checkpoints, writes ``dq, dD`` (complex), ``dk, dv`` (real) and the STE's ``N^2``,
    and passes the chunk's states through its scratch buffer (written once, read once; L2-resident at
    training sizes, counted here as HBM).
    """
    extra = 2 * N * P * max(levels - 1.0, 0.0)
    step = 6 * N * P + extra + 2 * N * P
    fwd = step + 4 * N * P
    bwd = step + (4 + 4 + 2 + 2 + 8 + 6) * N * P + ((6 * N * P + 4 * N * N * P) if ste else 0.0)
    reads = 8 * N + 4 * N + 4 * P + 8 * N + 8 * N  # q, k, v, idx, D
    ckpt = 8 * N * P / chunk_size
    fwd_bytes = reads + 4 * P + ckpt
    bwd_bytes = (reads - 8 * N) + reads + 4 * P + ckpt + 4 * (2 * N + N + 2 * N + P) + 2 * 8 * N * P
    bwd_bytes += 4 * N * N if ste else 0.0
    return TokenCost(fwd, fwd + bwd, fwd_bytes, fwd_bytes + bwd_bytes)


if HAS_TRITON:

    @triton.jit
    def _load_c(re_ptr, im_ptr, offs, mask, HAS_IM: tl.constexpr):
        """A complex vector (``im = 0`` for a real tensor), float32."""
        re = tl.load(re_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_IM:
            im = tl.load(im_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            im = tl.zeros_like(re)
        return re, im

    @triton.jit
    def _load_token(
        k_re, k_im, v_re, v_im, idx_ptr, d_re, d_im,
        t, b, h, rows, cols, mask_n, mask_p,
        sk_b, sk_t, sk_h, sk_n, sv_b, sv_t, sv_h, sv_p,
        si_b, si_t, si_h, si_n, sd_b, sd_t, sd_h, sd_n,
        K_IM: tl.constexpr, V_IM: tl.constexpr, D_IM: tl.constexpr,
    ):  # fmt: skip
        """Token ``t``'s transition (``idx`` padded with the identity, ``D`` with 0), ``k`` and ``v``."""
        kr, ki = _load_c(k_re, k_im, b * sk_b + t * sk_t + h * sk_h + rows * sk_n, mask_n, K_IM)
        vr, vi = _load_c(v_re, v_im, b * sv_b + t * sv_t + h * sv_h + cols * sv_p, mask_p, V_IM)
        dr, di = _load_c(d_re, d_im, b * sd_b + t * sd_t + h * sd_h + rows * sd_n, mask_n, D_IM)
        ix = tl.load(idx_ptr + b * si_b + t * si_t + h * si_h + rows * si_n, mask=mask_n, other=0)
        ix = tl.where(mask_n, ix.to(tl.int32), rows)
        return ix, dr, di, kr, ki, vr, vi

    @triton.jit
    def _pd_apply(h_re, h_im, ix, dr, di, rows):
        """``P D h``: ``(D h)[j]`` added onto row ``ix[j]``, colliding columns in levels of gathers."""
        a_re = dr[:, None] * h_re - di[:, None] * h_im
        a_im = dr[:, None] * h_im + di[:, None] * h_re
        same = ix[:, None] == ix[None, :]  # [j, j']
        earlier = rows[None, :] < rows[:, None]  # j' < j
        rank = tl.sum((same & earlier).to(tl.int32), axis=1)  # earlier columns on j's row
        n_levels = tl.max(rank, axis=0) + 1
        lands = ix[None, :] == rows[:, None]  # [i, j]: column j lands on row i
        acc_re = tl.zeros_like(a_re)
        acc_im = tl.zeros_like(a_im)
        for lvl in range(0, n_levels):
            sel = lands & (rank[None, :] == lvl)
            src = tl.sum(tl.where(sel, rows[None, :], 0), axis=1)  # the column of rank lvl, or 0
            hit = tl.sum(sel.to(tl.int32), axis=1) > 0
            src2 = tl.broadcast_to(src[:, None], a_re.shape)
            acc_re += tl.where(hit[:, None], tl.gather(a_re, src2, 0), 0.0)
            acc_im += tl.where(hit[:, None], tl.gather(a_im, src2, 0), 0.0)
        return acc_re, acc_im

    @triton.jit
    def _pd_step(h_re, h_im, ix, dr, di, kr, ki, vr, vi, rows, KV_IM: tl.constexpr):
        """``h <- P D h + k v^T`` (``KV_IM`` False: ``k, v`` real, their product only on the real part)."""
        a_re, a_im = _pd_apply(h_re, h_im, ix, dr, di, rows)
        a_re += kr[:, None] * vr[None, :]
        if KV_IM:
            a_re -= ki[:, None] * vi[None, :]
            a_im += kr[:, None] * vi[None, :] + ki[:, None] * vr[None, :]
        return a_re, a_im

    @triton.jit
    def _pd_fwd_kernel(
        q_re, q_im, k_re, k_im, v_re, v_im, idx_ptr, d_re, d_im, h0_re, h0_im,
        o_ptr, hT_re, hT_im, ck_re, ck_im,
        T, N, P, H, nc,
        sq_b, sq_t, sq_h, sq_n, sk_b, sk_t, sk_h, sk_n, sv_b, sv_t, sv_h, sv_p,
        si_b, si_t, si_h, si_n, sd_b, sd_t, sd_h, sd_n, so_b, so_t, so_h, so_p,
        Q_IM: tl.constexpr, K_IM: tl.constexpr, V_IM: tl.constexpr, KV_IM: tl.constexpr, D_IM: tl.constexpr,
        HAS_H0: tl.constexpr, SAVE: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """One (batch, head, value block): the whole sequence, the state ``[BLOCK_N, BLOCK_P]`` in registers."""
        pid_m = tl.program_id(0)
        pid_p = tl.program_id(1)
        b = pid_m // H
        h = pid_m % H
        rows = tl.arange(0, BLOCK_N)
        cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_n = rows < N
        mask_p = cols < P
        mask = mask_n[:, None] & mask_p[None, :]
        st = pid_m * N * P + rows[:, None] * P + cols[None, :]  # [M, N, P] state buffers
        if HAS_H0:
            h_re = tl.load(h0_re + st, mask=mask, other=0.0)
            h_im = tl.load(h0_im + st, mask=mask, other=0.0)
        else:
            h_re = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
            h_im = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        for c in range(0, nc):
            if SAVE:  # the state entering chunk c, for the backward's recompute
                ck = (pid_m * nc + c) * N * P + rows[:, None] * P + cols[None, :]
                tl.store(ck_re + ck, h_re, mask=mask)
                tl.store(ck_im + ck, h_im, mask=mask)
            t_end = tl.minimum((c + 1) * CHUNK, T)
            for t in range(c * CHUNK, t_end):
                ix, dr, di, kr, ki, vr, vi = _load_token(
                    k_re, k_im, v_re, v_im, idx_ptr, d_re, d_im, t, b, h, rows, cols, mask_n, mask_p,
                    sk_b, sk_t, sk_h, sk_n, sv_b, sv_t, sv_h, sv_p,
                    si_b, si_t, si_h, si_n, sd_b, sd_t, sd_h, sd_n, K_IM, V_IM, D_IM,
                )  # fmt: skip
                h_re, h_im = _pd_step(h_re, h_im, ix, dr, di, kr, ki, vr, vi, rows, KV_IM)
                qr, qi = _load_c(q_re, q_im, b * sq_b + t * sq_t + h * sq_h + rows * sq_n, mask_n, Q_IM)
                if Q_IM:
                    o = tl.sum(qr[:, None] * h_re - qi[:, None] * h_im, axis=0)  # Re(q^T h)
                else:
                    o = tl.sum(qr[:, None] * h_re, axis=0)
                tl.store(o_ptr + b * so_b + t * so_t + h * so_h + cols * so_p, o, mask=mask_p)
        tl.store(hT_re + st, h_re, mask=mask)
        tl.store(hT_im + st, h_im, mask=mask)

    @triton.jit
    def _pd_bwd_kernel(
        q_re, q_im, k_re, k_im, v_re, v_im, idx_ptr, d_re, d_im,
        ck_re, ck_im, do_ptr, gT_re, gT_im, sc_re, sc_im,
        dq_re, dq_im, dk_re, dk_im, dv_re, dv_im, dD_re, dD_im, dh0_re, dh0_im, dP_ptr,
        T, N, P, H, nc, vec_stride, mat_stride,
        sq_b, sq_t, sq_h, sq_n, sk_b, sk_t, sk_h, sk_n, sv_b, sv_t, sv_h, sv_p,
        si_b, si_t, si_h, si_n, sd_b, sd_t, sd_h, sd_n, so_b, so_t, so_h, so_p,
        Q_IM: tl.constexpr, K_IM: tl.constexpr, V_IM: tl.constexpr, KV_IM: tl.constexpr, D_IM: tl.constexpr,
        HAS_GT: tl.constexpr, HAS_STE: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Reverse-time sweep, chunk by chunk (recompute the chunk's states, then walk it backwards).

        ``R`` carries ``A_{t+1}^H G_{t+1}`` (the gradient reaching ``h_t`` from the future). Per-block
        partial sums over the value columns go to ``[npb, B, T, H, ...]`` buffers (``vec_stride`` /
        ``mat_stride`` apart)."""
        pid_m = tl.program_id(0)
        pid_p = tl.program_id(1)
        npb = tl.num_programs(1)
        b = pid_m // H
        h = pid_m % H
        rows = tl.arange(0, BLOCK_N)
        cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_n = rows < N
        mask_p = cols < P
        mask = mask_n[:, None] & mask_p[None, :]
        st = pid_m * N * P + rows[:, None] * P + cols[None, :]
        if HAS_GT:
            R_re = tl.load(gT_re + st, mask=mask, other=0.0)
            R_im = tl.load(gT_im + st, mask=mask, other=0.0)
        else:
            R_re = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
            R_im = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        blk = rows[:, None] * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]  # scratch: padded, no mask
        sc = (pid_m * npb + pid_p) * (CHUNK + 1) * BLOCK_N * BLOCK_P
        for cc in range(0, nc):
            c = nc - 1 - cc
            t0 = c * CHUNK
            n_t = tl.minimum(CHUNK, T - t0)
            ck = (pid_m * nc + c) * N * P + rows[:, None] * P + cols[None, :]
            h_re = tl.load(ck_re + ck, mask=mask, other=0.0)
            h_im = tl.load(ck_im + ck, mask=mask, other=0.0)
            tl.store(sc_re + sc + blk, h_re)
            tl.store(sc_im + sc + blk, h_im)
            for s in range(0, n_t):  # recompute: slot s + 1 holds h after token t0 + s
                ix, dr, di, kr, ki, vr, vi = _load_token(
                    k_re, k_im, v_re, v_im, idx_ptr, d_re, d_im, t0 + s, b, h, rows, cols, mask_n, mask_p,
                    sk_b, sk_t, sk_h, sk_n, sv_b, sv_t, sv_h, sv_p,
                    si_b, si_t, si_h, si_n, sd_b, sd_t, sd_h, sd_n, K_IM, V_IM, D_IM,
                )  # fmt: skip
                h_re, h_im = _pd_step(h_re, h_im, ix, dr, di, kr, ki, vr, vi, rows, KV_IM)
                tl.store(sc_re + sc + (s + 1) * BLOCK_N * BLOCK_P + blk, h_re)
                tl.store(sc_im + sc + (s + 1) * BLOCK_N * BLOCK_P + blk, h_im)
            tl.debug_barrier()
            cur_re = h_re  # h_t for the last token of the chunk
            cur_im = h_im
            for ss in range(0, n_t):
                s = n_t - 1 - ss
                t = t0 + s
                prev_re = tl.load(sc_re + sc + s * BLOCK_N * BLOCK_P + blk)  # h_{t-1}
                prev_im = tl.load(sc_im + sc + s * BLOCK_N * BLOCK_P + blk)
                ix, dr, di, kr, ki, vr, vi = _load_token(
                    k_re, k_im, v_re, v_im, idx_ptr, d_re, d_im, t, b, h, rows, cols, mask_n, mask_p,
                    sk_b, sk_t, sk_h, sk_n, sv_b, sv_t, sv_h, sv_p,
                    si_b, si_t, si_h, si_n, sd_b, sd_t, sd_h, sd_n, K_IM, V_IM, D_IM,
                )  # fmt: skip
                qr, qi = _load_c(q_re, q_im, b * sq_b + t * sq_t + h * sq_h + rows * sq_n, mask_n, Q_IM)
                do = tl.load(do_ptr + b * so_b + t * so_t + h * so_h + cols * so_p, mask=mask_p, other=0.0)
                # readout o = Re(q^T h): dL/dh = conj(q) do^T, dL/dq = sum_p do conj(h)
                G_re = R_re + qr[:, None] * do[None, :]
                if Q_IM:
                    G_im = R_im - qi[:, None] * do[None, :]
                else:
                    G_im = R_im
                g_q_re = tl.sum(cur_re * do[None, :], axis=1)
                g_q_im = -tl.sum(cur_im * do[None, :], axis=1)
                # b = k v^T: dL/dk = G conj(v), dL/dv = G^T conj(k)
                if KV_IM:
                    g_k_re = tl.sum(G_re * vr[None, :] + G_im * vi[None, :], axis=1)
                    g_k_im = tl.sum(G_im * vr[None, :] - G_re * vi[None, :], axis=1)
                    g_v_re = tl.sum(G_re * kr[:, None] + G_im * ki[:, None], axis=0)
                    g_v_im = tl.sum(G_im * kr[:, None] - G_re * ki[:, None], axis=0)
                else:  # real k, v: only Re(G) reaches them
                    g_k_re = tl.sum(G_re * vr[None, :], axis=1)
                    g_k_im = g_k_re  # never stored (K_IM is False)
                    g_v_re = tl.sum(G_re * kr[:, None], axis=0)
                    g_v_im = g_v_re  # never stored (V_IM is False)
                # dL/dA = G h_{t-1}^H read at the nonzeros: dD[j] = sum_p G[idx_j, p] conj(h_{t-1}[j, p])
                src = tl.broadcast_to(ix[:, None], G_re.shape)
                Gi_re = tl.gather(G_re, src, 0)
                Gi_im = tl.gather(G_im, src, 0)
                g_d_re = tl.sum(Gi_re * prev_re + Gi_im * prev_im, axis=1)
                g_d_im = tl.sum(Gi_im * prev_re - Gi_re * prev_im, axis=1)
                vec = pid_p * vec_stride + b * (T * H * N) + t * (H * N) + h * N + rows
                tl.store(dq_re + vec, g_q_re, mask=mask_n)
                tl.store(dk_re + vec, g_k_re, mask=mask_n)
                tl.store(dD_re + vec, g_d_re, mask=mask_n)
                if Q_IM:
                    tl.store(dq_im + vec, g_q_im, mask=mask_n)
                if K_IM:
                    tl.store(dk_im + vec, g_k_im, mask=mask_n)
                if D_IM:
                    tl.store(dD_im + vec, g_d_im, mask=mask_n)
                pv = b * (T * H * P) + t * (H * P) + h * P + cols
                tl.store(dv_re + pv, g_v_re, mask=mask_p)
                if V_IM:
                    tl.store(dv_im + pv, g_v_im, mask=mask_p)
                if HAS_STE:  # dL/dP[i, j] = Re(sum_p G[i, p] conj(D[j] h_{t-1}[j, p]))
                    a_re = dr[:, None] * prev_re - di[:, None] * prev_im
                    a_im = dr[:, None] * prev_im + di[:, None] * prev_re
                    gp = tl.dot(G_re, tl.trans(a_re), input_precision="ieee")
                    gp = tl.dot(G_im, tl.trans(a_im), gp, input_precision="ieee")
                    mat = (
                        pid_p * mat_stride
                        + (b * (T * H) + t * H + h) * (N * N)
                        + rows[:, None] * N
                        + rows[None, :]
                    )
                    tl.store(dP_ptr + mat, gp, mask=mask_n[:, None] & mask_n[None, :])
                # R <- A_t^H G_t: (A^H G)[j] = conj(D[j]) G[idx[j]]
                R_re = dr[:, None] * Gi_re + di[:, None] * Gi_im
                R_im = dr[:, None] * Gi_im - di[:, None] * Gi_re
                cur_re = prev_re
                cur_im = prev_im
            tl.debug_barrier()  # the next chunk overwrites the scratch
        tl.store(dh0_re + st, R_re, mask=mask)
        tl.store(dh0_im + st, R_im, mask=mask)
