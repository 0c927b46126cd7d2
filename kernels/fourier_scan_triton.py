"""The circulant scan in the Fourier domain as a Triton kernel: a complex diagonal recurrence per bin.

``circulant_scan`` (kernels/fourier.py) runs ``h_t = C_t h_{t-1} + k_t v_t^T``, ``o_t = h_t^T q_t`` with
``C_t`` block-diagonal of real circulants given by their half spectra ``lam_t``. In the Fourier basis
every ``C_t`` is diagonal: with ``H_t = rfft(h_t)`` per block (along the state dimension),

    H_t[f] = lam_t[f] H_{t-1}[f] + K_t[f] v_t^T,     o_t = sum_f Re(Qw_t[f] H_t[f])

with ``K = rfft(k)``, ``Qw = (w_f / b) conj(rfft(q))`` (Parseval; ``w_f = 1`` on the self-conjugate
bins, 2 elsewhere) and ``f`` running over the ``F = n_blocks (b // 2 + 1)`` bins of all blocks. That
recurrence is elementwise in ``f`` and in the value column ``p``: ``O(F P)`` complex multiply-adds
per token, about ``N / 2`` complex decays (``token_cost``).

Split of the work. Torch does what is parallel over time: the transforms of ``q, k`` (``torch.fft``),
the eigenvalues in complex form (``polar`` for a ``(magnitude, phase)`` pair), their projection onto
real circulants (the self-conjugate bins keep their real part, as ``irfft`` does), ``rfft`` of the
initial state and ``irfft`` of the final one; autograd differentiates those. The kernel does the
scan: one program per (batch, head, block of ``BLOCK_P`` value columns), the state
``[F, BLOCK_P]`` complex in registers, a loop over time; ``F`` is padded to ``BLOCK_F`` (a power of
two, at least 16) with masked rows, so no power-of-two size is required of ``N`` or ``b``.

Backward (``torch.autograd.Function``, Triton): the forward saves the Fourier state at the start of
every chunk of ``chunk_size`` tokens; the backward walks the chunks last to first, recomputes a
chunk's states from its checkpoint into a per-program scratch buffer, and sweeps it in reverse with
``G_t = conj(Qw_t) do_t^T + conj(lam_{t+1}) G_{t+1}``: ``dQw = sum_p do conj(H_t)``,
``dK = G v``, ``dv = Re(G^T conj(K))``, ``dlam = sum_p G conj(H_{t-1})``. The recurrence is not
inverted (``H_{t-1} = (H_t - K v^T) / lam`` is unstable for small ``|lam|``), hence the recompute.
Gradients summed over the value columns are written per block and summed by torch.

Precision: computed in float32 whatever the input (half inputs are promoted, as ``impl="chunk"``
does; float64 runs the torch paths). Eigenvalues are multiplied step by step in float32, so the phase
error grows like ``T eps`` (as in the ``recurrent`` reference; ``impl="chunk"`` sums phases in
float64 instead).

Use: ``circulant_scan(impl="auto")``, its default, takes this kernel for CUDA tensors it supports
and ``impl="chunk"`` otherwise (never on CPU). Its callers are ``circulant`` and ``cayley-circulant``;
``circulant-diagonal`` and ``neumann-orthogonal`` do not diagonalise in one basis and run the dense
scan. Tested under ``TRITON_INTERPRET=1`` (tests/test_kernels_triton.py); scripts/gpu-kernels-check
checks and times it on a GPU.
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

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.complex64)


def triton_usable(*tensors: Tensor | None) -> bool:
    """True where the Triton Fourier scan can run on these tensors: triton installed, float32 or half
    (computed in float32) / complex64, and CUDA (or CPU with ``TRITON_INTERPRET=1`` set before triton
    was imported)."""
    ts = [t for t in tensors if t is not None]
    if not HAS_TRITON or not ts or any(t.dtype not in FLOAT_DTYPES for t in ts):
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
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise RuntimeError(
                f"impl='triton' supports float32 / float16 / bfloat16 / complex64, got {t.dtype}; "
                "use impl='chunk'"
            )
    if not triton_usable(*tensors):
        raise RuntimeError(
            "impl='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before triton "
            f"is imported); got devices {sorted({str(t.device) for t in tensors if t is not None})}"
        )


def _empty(shape, dtype, device) -> Tensor:
    """Every buffer the kernels write comes from here (a test hands out poisoned memory)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _planes(x: Tensor) -> tuple[Tensor, Tensor]:
    r = torch.view_as_real(x.resolve_conj())
    return r[..., 0], r[..., 1]


def _block(n: int, cap: int | None = None) -> int:
    b = max(16, triton.next_power_of_2(max(n, 1)))
    return b if cap is None else min(b, max(16, cap))


def _strides4(x: Tensor) -> tuple[int, int, int, int]:
    return tuple(x.stride())  # type: ignore[return-value]


def _launch_forward(qw, kf, v, lam, H0, chunk_size: int, block_p: int, save: bool):
    B, T, Hh, F = qw.shape
    P = v.shape[-1]
    dev = qw.device
    M, nc = B * Hh, triton.cdiv(T, chunk_size)
    BF, BP = _block(F), _block(P, block_p)
    (qr, qi), (kr, ki), (lr, li) = (_planes(x) for x in (qw, kf, lam))
    f32 = torch.float32
    o = _empty((B, T, Hh, P), f32, dev)
    hT = [_empty((M, F, P), f32, dev) for _ in range(2)]
    ck = [_empty((M, nc, F, P), f32, dev) for _ in range(2)] if save else hT  # dummies unless SAVE
    if H0 is not None:
        H0 = H0.reshape(M, F, P)
        h0 = [H0.real.contiguous(), H0.imag.contiguous()]
    else:
        h0 = hT  # dummies, never read when HAS_H0 is False
    _fourier_fwd_kernel[(M, triton.cdiv(P, BP))](
        qr, qi, kr, ki, v, lr, li, h0[0], h0[1], o, hT[0], hT[1], ck[0], ck[1],
        T, F, P, Hh, nc,
        *_strides4(qr), *_strides4(kr), *_strides4(v), *_strides4(lr), *_strides4(o),
        HAS_H0=H0 is not None, SAVE=save, CHUNK=chunk_size, BLOCK_F=BF, BLOCK_P=BP,
    )  # fmt: skip
    return o, torch.complex(hT[0], hT[1]), ck if save else None


def _launch_backward(qw, kf, v, lam, ck, do, gT, chunk_size: int, block_p: int):
    B, T, Hh, F = qw.shape
    P = v.shape[-1]
    dev = qw.device
    M, nc = B * Hh, triton.cdiv(T, chunk_size)
    BF, BP = _block(F), _block(P, block_p)
    npb = triton.cdiv(P, BP)
    (qr, qi), (kr, ki), (lr, li) = (_planes(x) for x in (qw, kf, lam))
    f32 = torch.float32
    dq, dk, dl = ([_empty((npb, B, T, Hh, F), f32, dev) for _ in range(2)] for _ in range(3))
    dv = _empty((B, T, Hh, P), f32, dev)
    dh0 = [_empty((M, F, P), f32, dev) for _ in range(2)]
    scratch = [_empty((M * npb, chunk_size + 1, BF, BP), f32, dev) for _ in range(2)]
    do = do if do is not None else torch.zeros(B, T, Hh, P, dtype=f32, device=dev)
    if gT is not None:
        gT = gT.to(torch.complex64).reshape(M, F, P)
        g = [gT.real.contiguous(), gT.imag.contiguous()]
    else:
        g = dh0  # dummies, never read when HAS_GT is False
    _fourier_bwd_kernel[(M, npb)](
        qr, qi, kr, ki, v, lr, li, ck[0], ck[1], do, g[0], g[1], scratch[0], scratch[1],
        dq[0], dq[1], dk[0], dk[1], dv, dl[0], dl[1], dh0[0], dh0[1],
        T, F, P, Hh, nc, B * T * Hh * F,
        *_strides4(qr), *_strides4(kr), *_strides4(v), *_strides4(lr), *_strides4(do),
        HAS_GT=gT is not None, CHUNK=chunk_size, BLOCK_F=BF, BLOCK_P=BP,
    )  # fmt: skip

    def red(x):  # per-block partial sums (re, im planes) -> one complex tensor
        return torch.complex(x[0][0], x[1][0]) if npb == 1 else torch.complex(x[0].sum(0), x[1].sum(0))

    return red(dq), red(dk), dv, red(dl), torch.complex(dh0[0], dh0[1]).view(B, Hh, F, P)


class _FourierScanTriton(torch.autograd.Function):
    """``(Qw, K, v, lam, H0) -> (o, H_T)``, all Fourier-domain (``[B, T, H, F]`` complex, ``v`` real)."""

    @staticmethod
    def forward(ctx, qw, kf, v, lam, H0, chunk_size: int, block_p: int, save: bool):
        B, T, Hh, F = qw.shape
        o, HT, ck = _launch_forward(qw, kf, v, lam, H0, chunk_size, block_p, save)
        if save:
            ctx.save_for_backward(qw, kf, v, lam, *ck)
        ctx.meta = (chunk_size, block_p, save)
        return o, HT.view(B, Hh, F, v.shape[-1])

    @staticmethod
    def backward(ctx, do: Tensor | None, gT: Tensor | None):
        chunk_size, block_p, save = ctx.meta
        if not save:
            raise RuntimeError("the Triton Fourier scan ran without saving checkpoints; no backward")
        qw, kf, v, lam, ck_re, ck_im = ctx.saved_tensors
        dqw, dkf, dv, dlam, dH0 = _launch_backward(
            qw, kf, v, lam, (ck_re, ck_im), do, gT, chunk_size, block_p
        )
        need = ctx.needs_input_grad
        grads = (dqw, dkf, dv, dlam, dH0)
        return (*(g if need[i] else None for i, g in enumerate(grads)), None, None, None)


def circulant_scan_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor | tuple[Tensor, Tensor],
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    block_p: int = 64,
) -> tuple[Tensor, Tensor]:
    """``circulant_scan(..., impl="triton")`` (shapes checked there): ``(o [B, T, H, P], h_T [B, H, N, P])``.

    ``chunk_size`` is the interval between the states the forward saves for the backward;
    ``block_p`` caps the value columns per program.
    """
    pair = isinstance(lam, tuple)
    _check_usable(q, k, v, *(lam if pair else (lam,)), initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if initial_state is not None:
        out_dtype = torch.promote_types(out_dtype, initial_state.dtype)
    f32 = torch.float32
    N = q.shape[-1]
    nblk = (lam[0] if pair else lam).shape[3]
    b = N // nblk
    nb = b // 2 + 1
    selfconj = torch.zeros(nb, dtype=torch.bool, device=q.device)
    selfconj[0] = True
    if b % 2 == 0:
        selfconj[-1] = True
    weight = torch.where(selfconj, 1.0 / b, 2.0 / b).to(device=q.device)

    def real_bins(z: Tensor) -> Tensor:  # spectra of real circulants / real vectors: real self-conjugate bins
        return torch.where(selfconj, torch.complex(z.real, torch.zeros_like(z.real)), z)

    lam_c = torch.polar(lam[0].to(f32), lam[1].to(f32)) if pair else lam.to(torch.complex64)
    lam_c = real_bins(lam_c).flatten(-2)  # [B, T, H, F]
    Qw = (real_bins(torch.fft.rfft(q.to(f32).unflatten(-1, (nblk, b)), dim=-1)).conj() * weight).flatten(-2)
    Kf = real_bins(torch.fft.rfft(k.to(f32).unflatten(-1, (nblk, b)), dim=-1)).flatten(-2)
    H0 = None
    if initial_state is not None:  # [B, H, nblk, b, P] -> rfft over b -> [B, H, F, P]
        H0 = torch.fft.rfft(initial_state.to(f32).unflatten(-2, (nblk, b)), dim=-2)
        H0 = real_bins(H0.transpose(-1, -2)).transpose(-1, -2).flatten(-3, -2)
    leaves = (q, k, v, initial_state, *(lam if pair else (lam,)))
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in leaves)
    o, HT = _FourierScanTriton.apply(Qw.resolve_conj(), Kf, v.to(f32), lam_c, H0, chunk_size, block_p, save)
    hT = torch.fft.irfft(HT.unflatten(-2, (nblk, nb)), n=b, dim=-2).flatten(-3, -2)  # [B, H, N, P]
    return o.to(out_dtype), hT.to(out_dtype)


def token_cost(N: int, P: int, n_blocks: int = 1, chunk_size: int = 64) -> TokenCost:
    """Per head and token, what the kernel does on ``F = n_blocks (b // 2 + 1)`` complex bins.

    FLOPs: ``lam H`` (6 F P), ``K v^T`` added (``K`` complex, ``v`` real: 4 F P), readout
    ``Re(Qw^T H)`` (4 F P); the transforms of ``q, k`` (torch) are in ``fourier.token_cost`` and left
    out here. Backward: the recompute (10 F P), ``G`` (4 F P), ``dQw, dK, dv`` (4 F P each),
    ``dlam`` (8 F P), the adjoint ``conj(lam) G`` (6 F P). Bytes are HBM traffic (the state stays in
    registers): reads of ``Qw, K, lam`` (complex) and ``v``, the write of ``o``, a checkpoint every
    ``chunk_size`` tokens; backward: the inputs read in the recompute (not ``Qw``) and the sweep,
    ``do`` and the checkpoints read, ``dQw, dK, dlam`` (complex) and ``dv`` written, and the scratch
    states written and read once (L2-resident at training sizes, counted as HBM)."""
    b = N // n_blocks
    F = n_blocks * (b // 2 + 1)
    fwd = 14 * F * P
    bwd = 10 * F * P + 4 * F * P + 12 * F * P + 8 * F * P + 6 * F * P
    reads = 4 * (3 * 2 * F + P)
    ckpt = 8 * F * P / chunk_size
    fwd_bytes = reads + 4 * P + ckpt
    bwd_bytes = (reads - 8 * F) + reads + 4 * P + ckpt + 4 * (3 * 2 * F + P) + 2 * 8 * F * P
    return TokenCost(fwd, fwd + bwd, fwd_bytes, fwd_bytes + bwd_bytes)


if HAS_TRITON:

    @triton.jit
    def _fourier_fwd_kernel(
        q_re, q_im, k_re, k_im, v_ptr, l_re, l_im, h0_re, h0_im, o_ptr, hT_re, hT_im, ck_re, ck_im,
        T, F, P, H, nc,
        sq_b, sq_t, sq_h, sq_f, sk_b, sk_t, sk_h, sk_f, sv_b, sv_t, sv_h, sv_p,
        sl_b, sl_t, sl_h, sl_f, so_b, so_t, so_h, so_p,
        HAS_H0: tl.constexpr, SAVE: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """One (batch, head, value block): ``H <- lam H + K v^T``, ``o = Re(Qw^T H)`` token by token."""
        pid_m = tl.program_id(0)
        pid_p = tl.program_id(1)
        b = pid_m // H
        h = pid_m % H
        rows = tl.arange(0, BLOCK_F)
        cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_f = rows < F
        mask_p = cols < P
        mask = mask_f[:, None] & mask_p[None, :]
        st = pid_m * F * P + rows[:, None] * P + cols[None, :]
        if HAS_H0:
            s_re = tl.load(h0_re + st, mask=mask, other=0.0)
            s_im = tl.load(h0_im + st, mask=mask, other=0.0)
        else:
            s_re = tl.zeros((BLOCK_F, BLOCK_P), dtype=tl.float32)
            s_im = tl.zeros((BLOCK_F, BLOCK_P), dtype=tl.float32)
        for c in range(0, nc):
            if SAVE:
                ck = (pid_m * nc + c) * F * P + rows[:, None] * P + cols[None, :]
                tl.store(ck_re + ck, s_re, mask=mask)
                tl.store(ck_im + ck, s_im, mask=mask)
            t_end = tl.minimum((c + 1) * CHUNK, T)
            for t in range(c * CHUNK, t_end):
                lo = b * sl_b + t * sl_t + h * sl_h + rows * sl_f
                lr = tl.load(l_re + lo, mask=mask_f, other=0.0)
                li = tl.load(l_im + lo, mask=mask_f, other=0.0)
                ko = b * sk_b + t * sk_t + h * sk_h + rows * sk_f
                kr = tl.load(k_re + ko, mask=mask_f, other=0.0)
                ki = tl.load(k_im + ko, mask=mask_f, other=0.0)
                v = tl.load(v_ptr + b * sv_b + t * sv_t + h * sv_h + cols * sv_p, mask=mask_p, other=0.0)
                n_re = lr[:, None] * s_re - li[:, None] * s_im + kr[:, None] * v[None, :]
                n_im = lr[:, None] * s_im + li[:, None] * s_re + ki[:, None] * v[None, :]
                s_re = n_re
                s_im = n_im
                qo = b * sq_b + t * sq_t + h * sq_h + rows * sq_f
                qr = tl.load(q_re + qo, mask=mask_f, other=0.0)
                qi = tl.load(q_im + qo, mask=mask_f, other=0.0)
                o = tl.sum(qr[:, None] * s_re - qi[:, None] * s_im, axis=0)
                tl.store(o_ptr + b * so_b + t * so_t + h * so_h + cols * so_p, o, mask=mask_p)
        tl.store(hT_re + st, s_re, mask=mask)
        tl.store(hT_im + st, s_im, mask=mask)

    @triton.jit
    def _fourier_bwd_kernel(
        q_re, q_im, k_re, k_im, v_ptr, l_re, l_im, ck_re, ck_im, do_ptr, gT_re, gT_im, sc_re, sc_im,
        dq_re, dq_im, dk_re, dk_im, dv_ptr, dl_re, dl_im, dh0_re, dh0_im,
        T, F, P, H, nc, vec_stride,
        sq_b, sq_t, sq_h, sq_f, sk_b, sk_t, sk_h, sk_f, sv_b, sv_t, sv_h, sv_p,
        sl_b, sl_t, sl_h, sl_f, so_b, so_t, so_h, so_p,
        HAS_GT: tl.constexpr, CHUNK: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Reverse-time sweep by chunks; ``R`` carries ``conj(lam_{t+1}) G_{t+1}``."""
        pid_m = tl.program_id(0)
        pid_p = tl.program_id(1)
        npb = tl.num_programs(1)
        b = pid_m // H
        h = pid_m % H
        rows = tl.arange(0, BLOCK_F)
        cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_f = rows < F
        mask_p = cols < P
        mask = mask_f[:, None] & mask_p[None, :]
        st = pid_m * F * P + rows[:, None] * P + cols[None, :]
        if HAS_GT:
            R_re = tl.load(gT_re + st, mask=mask, other=0.0)
            R_im = tl.load(gT_im + st, mask=mask, other=0.0)
        else:
            R_re = tl.zeros((BLOCK_F, BLOCK_P), dtype=tl.float32)
            R_im = tl.zeros((BLOCK_F, BLOCK_P), dtype=tl.float32)
        blk = rows[:, None] * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
        sc = (pid_m * npb + pid_p) * (CHUNK + 1) * BLOCK_F * BLOCK_P
        for cc in range(0, nc):
            c = nc - 1 - cc
            t0 = c * CHUNK
            n_t = tl.minimum(CHUNK, T - t0)
            ck = (pid_m * nc + c) * F * P + rows[:, None] * P + cols[None, :]
            s_re = tl.load(ck_re + ck, mask=mask, other=0.0)
            s_im = tl.load(ck_im + ck, mask=mask, other=0.0)
            tl.store(sc_re + sc + blk, s_re)
            tl.store(sc_im + sc + blk, s_im)
            for s in range(0, n_t):
                t = t0 + s
                lo = b * sl_b + t * sl_t + h * sl_h + rows * sl_f
                lr = tl.load(l_re + lo, mask=mask_f, other=0.0)
                li = tl.load(l_im + lo, mask=mask_f, other=0.0)
                ko = b * sk_b + t * sk_t + h * sk_h + rows * sk_f
                kr = tl.load(k_re + ko, mask=mask_f, other=0.0)
                ki = tl.load(k_im + ko, mask=mask_f, other=0.0)
                v = tl.load(v_ptr + b * sv_b + t * sv_t + h * sv_h + cols * sv_p, mask=mask_p, other=0.0)
                n_re = lr[:, None] * s_re - li[:, None] * s_im + kr[:, None] * v[None, :]
                n_im = lr[:, None] * s_im + li[:, None] * s_re + ki[:, None] * v[None, :]
                s_re = n_re
                s_im = n_im
                tl.store(sc_re + sc + (s + 1) * BLOCK_F * BLOCK_P + blk, s_re)
                tl.store(sc_im + sc + (s + 1) * BLOCK_F * BLOCK_P + blk, s_im)
            tl.debug_barrier()
            cur_re = s_re
            cur_im = s_im
            for ss in range(0, n_t):
                s = n_t - 1 - ss
                t = t0 + s
                prev_re = tl.load(sc_re + sc + s * BLOCK_F * BLOCK_P + blk)
                prev_im = tl.load(sc_im + sc + s * BLOCK_F * BLOCK_P + blk)
                lo = b * sl_b + t * sl_t + h * sl_h + rows * sl_f
                lr = tl.load(l_re + lo, mask=mask_f, other=0.0)
                li = tl.load(l_im + lo, mask=mask_f, other=0.0)
                ko = b * sk_b + t * sk_t + h * sk_h + rows * sk_f
                kr = tl.load(k_re + ko, mask=mask_f, other=0.0)
                ki = tl.load(k_im + ko, mask=mask_f, other=0.0)
                qo = b * sq_b + t * sq_t + h * sq_h + rows * sq_f
                qr = tl.load(q_re + qo, mask=mask_f, other=0.0)
                qi = tl.load(q_im + qo, mask=mask_f, other=0.0)
                v = tl.load(v_ptr + b * sv_b + t * sv_t + h * sv_h + cols * sv_p, mask=mask_p, other=0.0)
                do = tl.load(do_ptr + b * so_b + t * so_t + h * so_h + cols * so_p, mask=mask_p, other=0.0)
                # o = Re(Qw^T H): dL/dH = conj(Qw) do^T, dL/dQw = sum_p do conj(H)
                G_re = R_re + qr[:, None] * do[None, :]
                G_im = R_im - qi[:, None] * do[None, :]
                vec = pid_p * vec_stride + b * (T * H * F) + t * (H * F) + h * F + rows
                tl.store(dq_re + vec, tl.sum(cur_re * do[None, :], axis=1), mask=mask_f)
                tl.store(dq_im + vec, -tl.sum(cur_im * do[None, :], axis=1), mask=mask_f)
                # K v^T (v real): dL/dK = G v, dL/dv = Re(G^T conj(K))
                tl.store(dk_re + vec, tl.sum(G_re * v[None, :], axis=1), mask=mask_f)
                tl.store(dk_im + vec, tl.sum(G_im * v[None, :], axis=1), mask=mask_f)
                g_v = tl.sum(G_re * kr[:, None] + G_im * ki[:, None], axis=0)
                tl.store(dv_ptr + b * (T * H * P) + t * (H * P) + h * P + cols, g_v, mask=mask_p)
                # lam H_{t-1}: dL/dlam = sum_p G conj(H_{t-1}), and G -> conj(lam) G
                tl.store(dl_re + vec, tl.sum(G_re * prev_re + G_im * prev_im, axis=1), mask=mask_f)
                tl.store(dl_im + vec, tl.sum(G_im * prev_re - G_re * prev_im, axis=1), mask=mask_f)
                R_re = lr[:, None] * G_re + li[:, None] * G_im
                R_im = lr[:, None] * G_im - li[:, None] * G_re
                cur_re = prev_re
                cur_im = prev_im
            tl.debug_barrier()
        tl.store(dh0_re + st, R_re, mask=mask)
        tl.store(dh0_im + st, R_im, mask=mask)
