"""Fourier helpers for circulant transitions, and the circulant-transition scan.

Conventions. A circulant matrix ``C = circ(c)`` has ``C[i, j] = c[(i - j) mod n]`` (first column
``c``), so ``C x = c (*) x`` (cyclic convolution) and ``C = F^{-1} diag(fft(c)) F``: its eigenvalues are
``lam = fft(c)`` with the Fourier vectors as eigenvectors. For a REAL ``c`` the spectrum is Hermitian
(``lam[n - j] = conj(lam[j])``), so the half spectrum ``rfft(c)`` (``n // 2 + 1`` bins) determines it;
bin 0 and, for even ``n``, bin ``n / 2`` are self-conjugate and must be real. Every function here
takes half spectra; ``real_spectrum`` projects an arbitrary complex half spectrum onto the valid
ones (imaginary parts of the self-conjugate bins dropped), which is exactly what ``irfft`` does.

``circulant_scan`` runs ``h_t = C_t h_{t-1} + k_t v_t^T``, ``o_t = h_t^T q_t`` (the transitions group's
recurrence, ``C_t`` block-diagonal with ``n_blocks`` circulant blocks of size ``b``) for input-dependent
eigenvalues ``lam [B, T, H, n_blocks, b // 2 + 1]``, given either as a complex tensor or as a pair
``(magnitude, phase)`` of real tensors (``lam = magnitude * e^{i phase}``; the pair form lets a caller
that parameterises eigenvalues in polar form skip complex arithmetic altogether):

- ``impl="chunk"``: in the Fourier basis the recurrence is diagonal. With ``H_t = rfft(h_t)``
  (per block, along the state dim), ``H_t[j] = lam_t[j] H_{t-1}[j] + rfft(k_t)[j] v_t``, and by
  Parseval ``q^T h = (1/b) sum_j w_j Re(conj(Q[j]) H[j])`` (``w_j = 1`` on self-conjugate bins, 2
  elsewhere; ``Q = rfft(q)``). Writing ``lam = |lam| e^{i theta}`` and ``Phi_t = sum_{s<=t} theta_s``,
  ``Re(conj(Q_t) H_t) = sum_s R_ts Re(z_t u_s) v_s`` with ``z_t = conj(Q_t) e^{i Phi_t}``,
  ``u_s = K_s e^{-i Phi_s}``, ``R_ts = prod |lam|`` (the RoPE identity): a REAL diagonal scan
  (kernels/diag_scan.py, chunkwise) over ``[Re, Im]`` channels with decays ``|lam|``. Self-conjugate
  bins have a real (possibly negative) eigenvalue and a real spectrum: they keep one channel and
  their signed eigenvalue as the decay. So the real scan has exactly ``N`` channels (the rfft is a
  real-linear bijection of R^b): no complex arithmetic, the same state size as ``h``. The transforms
  are real DFT matrices (``dft_matrices``) applied by one matmul: ``O(b^2)`` per step instead of an
  FFT's ``O(b log b)``, which for the small blocks of this group (``b = 16``) is cheaper on CPU than
  FFT calls plus complex elementwise ops (the same numbers; large blocks would want ``torch.fft``).
  ``Phi`` is a running sum over the whole sequence, accumulated in float64 (phases reduced mod
  2 pi before and after), so its rounding stays at float64 level even for float32 inputs.
- ``impl="recurrent"``: the reference, entirely in the real basis: each ``C_t`` materialised as a real
  ``b x b`` matrix from ``irfft(lam_t)`` and applied by a matmul, one step at a time. No transform of
  the state, no Parseval: an independent check of the Fourier-domain algebra.

Half-precision inputs are computed in float32 (FFTs and phase sums need it) and outputs cast back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import fourier_scan_triton
from .diag_scan import diag_scan

IMPLS = ("chunk", "recurrent")
SCAN_IMPLS = ("auto", *IMPLS, "triton")  # circulant_scan's; "auto": the Triton kernel on CUDA, else chunk


def n_bins(n: int) -> int:
    """Number of bins of the half spectrum of a real length-``n`` vector."""
    return n // 2 + 1


def self_conjugate_mask(n: int, device=None) -> Tensor:
    """Boolean ``[n // 2 + 1]``: bins whose eigenvalue must be real (bin 0; bin n/2 for even n)."""
    mask = torch.zeros(n_bins(n), dtype=torch.bool, device=device)
    mask[0] = True
    if n % 2 == 0:
        mask[-1] = True
    return mask


def hermitian_weights(n: int, dtype=torch.float32, device=None) -> Tensor:
    """``w [n // 2 + 1]``: how often each half-spectrum bin occurs in the full spectrum (1 or 2)."""
    return torch.where(self_conjugate_mask(n, device), 1.0, 2.0).to(dtype)


def real_spectrum(lam: Tensor, n: int) -> Tensor:
    """Project a complex half spectrum ``[..., n // 2 + 1]`` onto spectra of real circulants."""
    mask = self_conjugate_mask(n, lam.device)
    return torch.where(mask, torch.complex(lam.real, torch.zeros_like(lam.real)), lam)


def circulant_matrix(c: Tensor) -> Tensor:
    """``c [..., n]`` (first column) -> ``C [..., n, n]`` with ``C[i, j] = c[(i - j) mod n]``."""
    n = c.shape[-1]
    idx = (torch.arange(n, device=c.device)[:, None] - torch.arange(n, device=c.device)[None, :]) % n
    # torch.gather: its backward (scatter_add) is several times cheaper on CPU than advanced indexing's
    return torch.gather(c, -1, idx.flatten().expand(*c.shape[:-1], n * n)).unflatten(-1, (n, n))


def circulant_eigenvalues(c: Tensor) -> Tensor:
    """Half spectrum of ``circ(c)``: ``rfft(c)`` (``c`` real, ``[..., n]`` -> ``[..., n // 2 + 1]``)."""
    return torch.fft.rfft(c, dim=-1)


def circulant_from_eigenvalues(lam: Tensor, n: int) -> Tensor:
    """First column of the real circulant with half spectrum ``lam``: ``irfft(lam, n)``."""
    return torch.fft.irfft(lam, n=n, dim=-1)


def circulant_matvec(lam: Tensor, x: Tensor, dim: int = -1) -> Tensor:
    """``circ(irfft(lam)) x`` along ``dim`` of ``x`` by FFT; ``lam`` broadcasts against ``rfft(x)``."""
    n = x.shape[dim]
    X = torch.fft.rfft(x, dim=dim)
    return torch.fft.irfft(lam * X, n=n, dim=dim)


Eigenvalues = Tensor | tuple[Tensor, Tensor]


def _check(
    q: Tensor, k: Tensor, v: Tensor, lam: Eigenvalues, initial_state: Tensor | None
) -> tuple[int, int]:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "expected q, k [B, T, H, N] and v [B, T, H, P] with matching B, T, H; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    Bsz, T, H, N = q.shape
    if isinstance(lam, tuple):
        if len(lam) != 2 or lam[0].shape != lam[1].shape or lam[0].is_complex() or lam[1].is_complex():
            raise ValueError(
                "lam as a pair must be (magnitude, phase), two real tensors of one shape; got "
                f"{[(tuple(t.shape), t.dtype) for t in lam]}"
            )
        shape, ok = lam[0].shape, True
    else:
        shape, ok = lam.shape, lam.is_complex()
    if len(shape) != 5 or tuple(shape[:3]) != (Bsz, T, H) or not ok:
        raise ValueError(
            f"expected lam [B, T, H, n_blocks, b // 2 + 1] (complex, or a (magnitude, phase) pair) with B, T, H "
            f"of q {tuple(q.shape)}; got lam {tuple(shape)}{'' if ok else ' (real: pass a pair or a complex tensor)'}"
        )
    nblk = shape[3]
    if nblk < 1 or N % nblk or n_bins(N // nblk) != shape[4]:
        raise ValueError(
            f"lam [B, T, H, n_blocks, b // 2 + 1] needs N = n_blocks * b; got lam {tuple(shape)} for N={N}"
        )
    if initial_state is not None and tuple(initial_state.shape) != (Bsz, H, N, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [B, H, N, P] = {(Bsz, H, N, v.shape[-1])}, got {tuple(initial_state.shape)}"
        )
    return nblk, N // nblk


def complex_dtype(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64


def _compute_dtype(
    q: Tensor, k: Tensor, v: Tensor, initial_state: Tensor | None
) -> tuple[torch.dtype, torch.dtype]:
    out = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if initial_state is not None:
        out = torch.promote_types(out, initial_state.dtype)
    return (torch.float32 if out in (torch.float16, torch.bfloat16) else out), out


def circulant_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Eigenvalues,
    initial_state: Tensor | None = None,
    impl: str = "auto",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Returns ``(o [B, T, H, P], final_state [B, H, N, P])`` (real); see the module docstring."""
    nblk, b = _check(q, k, v, lam, initial_state)
    if impl == "auto":  # the Triton kernel (kernels/fourier_scan_triton.py) on CUDA if it applies; CPU: chunk
        lams = lam if isinstance(lam, tuple) else (lam,)
        on_gpu = fourier_scan_triton.use_triton_by_default(q, k, v, *lams, initial_state)
        impl = "triton" if on_gpu else "chunk"
    if impl == "triton":
        return fourier_scan_triton.circulant_scan_triton(q, k, v, lam, initial_state, chunk_size)
    if impl == "recurrent":
        return circulant_scan_recurrent(q, k, v, lam, initial_state)
    if impl == "chunk":
        return circulant_scan_chunk(q, k, v, lam, initial_state, chunk_size)
    raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(SCAN_IMPLS)}")


def circulant_scan_recurrent(
    q: Tensor, k: Tensor, v: Tensor, lam: Eigenvalues, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    nblk, b = _check(q, k, v, lam, initial_state)
    cdt, odt = _compute_dtype(q, k, v, initial_state)
    q, k, v = (t.to(cdt) for t in (q, k, v))
    Bsz, T, H, N = q.shape
    P = v.shape[-1]
    if isinstance(lam, tuple):
        lam = torch.polar(lam[0].to(cdt), lam[1].to(cdt))
    Cm = circulant_matrix(circulant_from_eigenvalues(lam.to(complex_dtype(cdt)), b))  # [B, T, H, nblk, b, b]
    h = (
        q.new_zeros(Bsz, H, nblk, b, P)
        if initial_state is None
        else initial_state.to(cdt).view(Bsz, H, nblk, b, P)
    )
    outs = []
    for t in range(T):
        kv = (k[:, t, :, :, None] * v[:, t, :, None, :]).view(Bsz, H, nblk, b, P)
        h = Cm[:, t] @ h + kv
        outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], h.reshape(Bsz, H, N, P)))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(Bsz, 0, H, P)
    return o.to(odt), h.reshape(Bsz, H, N, P).to(odt)


def dft_matrices(b: int, dtype: torch.dtype, device=None) -> tuple[Tensor, Tensor]:
    """Real forms of rfft / irfft along a length-``b`` axis, as matrices.

    ``fwd [b, 2 nb]``: ``x @ fwd = [Re rfft(x), Im rfft(x)]``; ``inv [2 nb, b]``:
    ``[Re X, Im X] @ inv = irfft(X, b)`` (imaginary parts of self-conjugate bins ignored, as irfft does).
    """
    nb = n_bins(b)
    ang = (
        2
        * math.pi
        * torch.outer(torch.arange(b, dtype=torch.float64), torch.arange(nb, dtype=torch.float64))
        / b
    )
    fwd = torch.cat([torch.cos(ang), -torch.sin(ang)], dim=1)
    w = hermitian_weights(b, torch.float64) / b
    inv = torch.cat([w[:, None] * torch.cos(ang).T, -w[:, None] * torch.sin(ang).T], dim=0)
    inv[nb:][self_conjugate_mask(b)] = 0.0
    return fwd.to(dtype=dtype, device=device), inv.to(dtype=dtype, device=device)


def circulant_scan_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Eigenvalues,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    nblk, b = _check(q, k, v, lam, initial_state)
    cdt, odt = _compute_dtype(q, k, v, initial_state)
    q, k, v = (t.to(cdt) for t in (q, k, v))
    if isinstance(lam, tuple):
        mag, theta = (t.to(cdt) for t in lam)
    else:
        lam = lam.to(complex_dtype(cdt))
        mag, theta = lam.abs(), torch.angle(lam)
    Bsz, T, H, N = q.shape
    nb = n_bins(b)
    hi = nb - 1 if b % 2 == 0 else nb  # complex bins are 1 .. hi - 1; 0 (and nb - 1 for even b) are real
    fwd, inv = dft_matrices(b, cdt, q.device)

    Qf = q.unflatten(-1, (nblk, b)) @ fwd  # [B, T, H, nblk, 2 nb]: [Re Q, Im Q]
    Kf = k.unflatten(-1, (nblk, b)) @ fwd
    Qr, Qi, Kr, Ki = Qf[..., :nb], Qf[..., nb:], Kf[..., :nb], Kf[..., nb:]
    # running phase of the complex bins only (the self-conjugate bins carry their sign in the decay)
    # accumulated in float64 whatever the compute dtype: a float32 running sum drifts like T eps |Phi|
    phi = torch.remainder(theta[..., 1:hi].double(), 2 * math.pi).cumsum(dim=1)
    phi = torch.remainder(phi, 2 * math.pi)
    c, s = torch.cos(phi).to(cdt), torch.sin(phi).to(cdt)
    w = 2.0 / b  # Parseval weight of a complex bin; self-conjugate bins weigh 1 / b
    # z = conj(Q) e^{i Phi}, u = K e^{-i Phi}; readout Re(z u) = Re z Re u - Im z Im u
    Qr_c, Qi_c, Kr_c, Ki_c = Qr[..., 1:hi], Qi[..., 1:hi], Kr[..., 1:hi], Ki[..., 1:hi]
    q_re = w * (Qr_c * c + Qi_c * s)
    q_im = w * (Qi_c * c - Qr_c * s)  # = -Im z
    k_re = Kr_c * c + Ki_c * s
    k_im = Ki_c * c - Kr_c * s
    real_bins = [0] if hi == nb else [0, nb - 1]
    q_real = Qr[..., real_bins] / b
    k_real = Kr[..., real_bins]
    d_real = mag[..., real_bins] * torch.cos(theta[..., real_bins])  # the (signed) real eigenvalue
    d_c = mag[..., 1:hi]
    # channels per block: [real bins, Re of complex bins, Im of complex bins] -> exactly b channels
    q2 = torch.cat([q_real, q_re, q_im], dim=-1).flatten(-2)
    k2 = torch.cat([k_real, k_re, k_im], dim=-1).flatten(-2)
    decay = torch.cat([d_real, d_c, d_c], dim=-1).flatten(-2)

    def pack_state(X: Tensor) -> Tensor:  # [B, H, nblk, 2 nb, P] ([Re; Im]) -> channels [B, H, N, P]
        Xr, Xi = X[..., :nb, :], X[..., nb:, :]
        return torch.cat([Xr[..., real_bins, :], Xr[..., 1:hi, :], Xi[..., 1:hi, :]], dim=-2).flatten(-3, -2)

    h0 = None
    if initial_state is not None:  # S_0 = H_0 = rfft(h_0) (Phi_0 = 0)
        H0 = fwd.T @ initial_state.to(cdt).unflatten(-2, (nblk, b))  # [B, H, nblk, 2 nb, P]
        h0 = pack_state(H0)
    o, S = diag_scan(q2, k2, v, decay, initial_state=h0, impl="chunk", chunk_size=chunk_size)

    # final state: H_T = e^{i Phi_T} S_T on the complex bins, S_T on the real ones; then irfft
    S = S.unflatten(-2, (nblk, b))  # [B, H, nblk, b, P]
    nr = len(real_bins)
    Sr, Sre, Sim = S[..., :nr, :], S[..., nr : nr + hi - 1, :], S[..., nr + hi - 1 :, :]
    if T:
        cT, sT = c[:, -1, ..., None], s[:, -1, ..., None]  # [B, H, nblk, hi - 1, 1]
        Sre, Sim = Sre * cT - Sim * sT, Sre * sT + Sim * cT
    zero = torch.zeros_like(Sr[..., :1, :])
    Hre = torch.cat([Sr[..., :1, :], Sre, Sr[..., 1:, :]], dim=-2)  # bins 0 .. nb - 1
    Him = torch.cat([zero, Sim, zero[..., : nb - hi, :]], dim=-2)
    hT = (inv.T @ torch.cat([Hre, Him], dim=-2)).flatten(-3, -2)  # [B, H, N, P]
    return o.to(odt), hT.to(odt)


def token_cost(N: int, P: int, n_blocks: int = 1, elem_bytes: int = 4):
    """Per head and token: FFTs of ``q`` and ``k`` (``2 x 5 b log2 b`` per block of size ``b``), then a
    diagonal scan over the ``N`` real Fourier channels (``b / 2 + 1`` complex bins: ~``N / 2`` complex
    decays, ``(9 + 4) (N / 2) P``). State ``N P`` reals, like the real basis."""
    from .cost import recurrence

    b = N // n_blocks
    fft = 2 * n_blocks * 5 * b * max(1.0, math.log2(b))
    return recurrence(fft + 13 * (N / 2) * P, N * P, elem_bytes)
