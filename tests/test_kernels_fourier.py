"""Fourier (circulant) and oscillatory (2x2-block) kernels: every fast path against its plain reference,
plus the structural claims the circulant-family and oscillatory candidates rely on."""

from __future__ import annotations

import math

import pytest
import torch

from harness import get_candidate
from harness.kernels.fourier import (
    circulant_eigenvalues,
    circulant_from_eigenvalues,
    circulant_matrix,
    circulant_matvec,
    circulant_scan,
    dft_matrices,
    hermitian_weights,
    real_spectrum,
    self_conjugate_mask,
)
from harness.kernels.oscillatory import block_powers, block_scan, linoss_im_blocks

F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# circulant helpers


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_circulant_matrix_definition_and_eigenvectors(n):
    c = torch.randn(n, dtype=F64, generator=gen())
    C = circulant_matrix(c)
    for i in range(n):
        for j in range(n):
            assert C[i, j] == c[(i - j) % n]
    # Fourier vectors e_j[m] = exp(2 pi i j m / n) are eigenvectors with eigenvalue fft(c)[j]
    lam_full = torch.fft.fft(c)
    m = torch.arange(n, dtype=F64)
    for j in range(n):
        e = torch.exp(2j * math.pi * j * m / n)
        assert torch.allclose(C.to(e.dtype) @ e, lam_full[j] * e, atol=1e-12)
    assert torch.allclose(circulant_eigenvalues(c), lam_full[: n // 2 + 1], atol=1e-12)


@pytest.mark.parametrize("n", [3, 8, 16])
def test_circulant_round_trip_and_matvec(n):
    c = torch.randn(4, n, dtype=F64, generator=gen(1))
    lam = circulant_eigenvalues(c)
    assert torch.allclose(circulant_from_eigenvalues(lam, n), c, atol=1e-12)
    x = torch.randn(4, n, 3, dtype=F64, generator=gen(2))
    assert torch.allclose(circulant_matvec(lam[..., None], x, dim=-2), circulant_matrix(c) @ x, atol=1e-12)


@pytest.mark.parametrize("n", [3, 8])
def test_real_spectrum_and_weights(n):
    mask = self_conjugate_mask(n)
    assert mask.tolist() == [True] + [False] * (n // 2 - 1 + n % 2) + ([True] if n % 2 == 0 else [])
    w = hermitian_weights(n, F64)
    assert float(w.sum()) == n  # every bin of the full spectrum counted once
    lam = torch.randn(n // 2 + 1, dtype=torch.complex128, generator=gen(3))
    proj = real_spectrum(lam, n)
    assert torch.all(proj.imag[mask] == 0) and torch.equal(proj[~mask], lam[~mask])
    # irfft applies the same projection: the projected spectrum is the spectrum of irfft(lam)
    assert torch.allclose(circulant_eigenvalues(circulant_from_eigenvalues(lam, n)), proj, atol=1e-12)


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_dft_matrices_are_rfft_and_irfft(n):
    x = torch.randn(5, n, dtype=F64, generator=gen(4))
    fwd, inv = dft_matrices(n, F64)
    X = torch.fft.rfft(x)
    assert torch.allclose(x @ fwd, torch.cat([X.real, X.imag], -1), atol=1e-12)
    Z = torch.randn(5, n // 2 + 1, dtype=torch.complex128, generator=gen(5))  # any spectrum, projected
    assert torch.allclose(torch.cat([Z.real, Z.imag], -1) @ inv, torch.fft.irfft(Z, n), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# circulant_scan: Fourier-domain chunk form vs real-basis reference


def circ_inputs(B, T, H, N, P, nblk, dtype=F64, seed=0, min_mag=0.3):
    g = gen(seed)
    b = N // nblk
    q, k = (torch.randn(B, T, H, N, dtype=F64, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, P, dtype=F64, generator=g)
    mag = min_mag + (1 - min_mag) * torch.rand(B, T, H, nblk, b // 2 + 1, dtype=F64, generator=g)
    phase = 3 * torch.randn(B, T, H, nblk, b // 2 + 1, dtype=F64, generator=g)
    lam = torch.polar(mag, phase)  # deliberately not real on the self-conjugate bins
    h0 = torch.randn(B, H, N, P, dtype=F64, generator=g)
    cdt = torch.complex128 if dtype == F64 else torch.complex64
    return q.to(dtype), k.to(dtype), v.to(dtype), lam.to(cdt), h0.to(dtype)


@pytest.mark.parametrize("N,nblk", [(16, 1), (16, 2), (16, 4), (12, 4), (10, 1), (8, 8)])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_circulant_scan_chunk_matches_reference_f64(N, nblk, chunk):
    q, k, v, lam, h0 = circ_inputs(2, 23, 3, N, 4, nblk)
    for init in (None, h0):
        o_ref, h_ref = circulant_scan(q, k, v, lam, init, impl="recurrent")
        o, h = circulant_scan(q, k, v, lam, init, impl="chunk", chunk_size=chunk)
        assert rel(o, o_ref) < 1e-12 and rel(h, h_ref) < 1e-12


@pytest.mark.parametrize("N,nblk", [(16, 1), (12, 4), (9, 3)])
def test_circulant_scan_polar_pair_equals_complex(N, nblk):
    q, k, v, lam, h0 = circ_inputs(2, 19, 2, N, 3, nblk)
    pair = (lam.abs(), torch.angle(lam) + 2 * math.pi)  # a phase off by 2 pi is the same eigenvalue
    for impl in ("recurrent", "chunk"):
        o, h = circulant_scan(q, k, v, lam, h0, impl=impl, chunk_size=8)
        o2, h2 = circulant_scan(q, k, v, pair, h0, impl=impl, chunk_size=8)
        assert rel(o2, o) < 1e-12 and rel(h2, h) < 1e-12


def test_circulant_scan_reference_is_the_real_circulant_recurrence():
    """The reference itself against an explicit loop with matrices built from full FFTs."""
    B, T, H, N, P = 1, 7, 2, 6, 3
    q, k, v, lam, _ = circ_inputs(B, T, H, N, P, 1)
    o_ref, _ = circulant_scan(q, k, v, lam, impl="recurrent")
    lam = real_spectrum(lam, N)
    full = torch.cat([lam, torch.conj(lam[..., 1 : N - N // 2].flip(-1))], dim=-1)[..., 0, :]  # [B,T,H,N]
    c = torch.fft.ifft(full, dim=-1)
    assert c.imag.abs().max() < 1e-12
    h = torch.zeros(B, H, N, P, dtype=F64)
    outs = []
    for t in range(T):
        h = circulant_matrix(c.real[:, t]) @ h + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], h))
    assert rel(o_ref, torch.stack(outs, 1)) < 1e-12


def test_circulant_scan_fp32_and_half():
    q, k, v, lam, h0 = circ_inputs(2, 40, 2, 16, 8, 1, min_mag=0.8)
    o_ref, h_ref = circulant_scan(q, k, v, lam, h0, impl="recurrent")
    args32 = [t.float() for t in (q, k, v)] + [lam.to(torch.complex64), h0.float()]
    o, h = circulant_scan(*args32, impl="chunk", chunk_size=16)
    assert o.dtype == torch.float32 and rel(o.double(), o_ref) < 1e-4 and rel(h.double(), h_ref) < 1e-4
    for half in (torch.bfloat16, torch.float16):
        o, h = circulant_scan(q.to(half), k.to(half), v.to(half), lam.to(torch.complex64), impl="chunk")
        o_ref0, _ = circulant_scan(q, k, v, lam, impl="recurrent")
        assert o.dtype == half and torch.isfinite(o.float()).all()
        assert float((o.double() - o_ref0).norm() / o_ref0.norm()) < 0.05


def test_circulant_scan_fp32_long_sequence_phase_does_not_drift():
    """The running phase is summed in float64: fp32 error stays flat over T = 4096 steps."""
    g = gen(11)
    B, T, H, N, P = 1, 4096, 1, 16, 4
    q, k = (torch.randn(B, T, H, N, dtype=F64, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, P, dtype=F64, generator=g)
    mag = torch.full((B, T, H, 1, 9), 0.99, dtype=F64)
    phase = 3 * torch.rand(B, T, H, 1, 9, dtype=F64, generator=g)
    o_ref, _ = circulant_scan(q, k, v, (mag, phase), impl="recurrent")
    o, _ = circulant_scan(q.float(), k.float(), v.float(), (mag.float(), phase.float()), impl="chunk")
    err = (o.double() - o_ref).abs()[:, -256:].max() / o_ref.abs().max()
    assert err < 5e-6


def test_circulant_scan_gradients_match_reference():
    q, k, v, lam, h0 = circ_inputs(1, 11, 2, 8, 3, 2)
    grads = []
    for impl in ("recurrent", "chunk"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, lam, h0)]
        o, h = circulant_scan(*leaves, impl=impl, chunk_size=4)
        w_o = torch.randn(o.shape, dtype=F64, generator=gen(5))
        w_h = torch.randn(h.shape, dtype=F64, generator=gen(6))
        ((o * w_o).sum() + (h * w_h).sum()).backward()
        grads.append([t.grad for t in leaves])
    for g_ref, g in zip(*grads):
        assert torch.isfinite(g).all() and rel(g, g_ref) < 1e-10


def test_circulant_scan_gradcheck_small():
    q, k, v, lam, _ = circ_inputs(1, 5, 1, 4, 2, 1)
    args = [t.clone().requires_grad_(True) for t in (q, k, v, lam)]
    assert torch.autograd.gradcheck(lambda *a: circulant_scan(*a, impl="chunk", chunk_size=2)[0], args)


def test_circulant_scan_causal():
    q, k, v, lam, _ = circ_inputs(1, 20, 2, 8, 3, 1)
    o, _ = circulant_scan(q, k, v, lam, impl="chunk", chunk_size=8)
    k2, v2 = k.clone(), v.clone()
    k2[:, 12:] += 1.0
    v2[:, 12:] -= 1.0
    o2, _ = circulant_scan(q, k2, v2, lam, impl="chunk", chunk_size=8)
    assert torch.equal(o[:, :12], o2[:, :12]) and not torch.allclose(o[:, 12:], o2[:, 12:])


def test_circulant_scan_bad_shapes():
    q, k, v, lam, h0 = circ_inputs(1, 4, 2, 8, 3, 1)
    with pytest.raises(ValueError, match="lam"):
        circulant_scan(q, k, v, lam.real)  # real eigenvalues
    with pytest.raises(ValueError, match="n_blocks"):
        circulant_scan(q, k, v, lam[..., :-1])  # wrong number of bins
    with pytest.raises(ValueError, match="n_blocks"):
        circulant_scan(q[..., :7], k[..., :7], v, torch.ones(1, 4, 2, 2, 2, dtype=torch.complex128))  # 2 !| 7
    with pytest.raises(ValueError, match=r"q, k \[B, T, H, N\]"):
        circulant_scan(q, k[:, :3], v, lam)
    with pytest.raises(ValueError, match="pair"):
        circulant_scan(q, k, v, (lam.abs(), lam.abs()[..., :2]))  # mismatched magnitude / phase
    with pytest.raises(ValueError, match="pair"):
        circulant_scan(q, k, v, (lam, lam))  # complex members
    with pytest.raises(ValueError, match="initial_state"):
        circulant_scan(q, k, v, lam, h0[..., :2])
    with pytest.raises(ValueError, match="impl"):
        circulant_scan(q, k, v, lam, impl="fft")


# ---------------------------------------------------------------------------------------------
# block_scan (2x2 oscillator blocks)


def osc_inputs(B, T, H, m, P, batch_A=True, dtype=F64, seed=0, scale=0.7):
    g = gen(seed)
    N = 2 * m
    q, k = (torch.randn(B, T, H, N, dtype=F64, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, P, dtype=F64, generator=g)
    A = scale * torch.randn(B if batch_A else 1, T, H, m, 2, 2, dtype=F64, generator=g)
    h0 = torch.randn(B, H, N, P, dtype=F64, generator=g)
    return tuple(t.to(dtype) for t in (q, k, v, A, h0))


@pytest.mark.parametrize("batch_A", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_block_scan_chunk_matches_reference_f64(batch_A, chunk):
    q, k, v, A, h0 = osc_inputs(2, 29, 3, 4, 5, batch_A)
    for init in (None, h0):
        o_ref, h_ref = block_scan(q, k, v, A, init, impl="recurrent")
        o, h = block_scan(q, k, v, A, init, impl="chunk", chunk_size=chunk)
        assert rel(o, o_ref) < 1e-12 and rel(h, h_ref) < 1e-12


@pytest.mark.parametrize("T,chunk", [(29, 1), (29, 4), (29, 8), (32, 8), (29, 64), (1, 8)])
def test_block_scan_time_invariant_path_matches_reference(T, chunk):
    q, k, v, A, h0 = osc_inputs(2, T, 3, 4, 5, batch_A=False, scale=0.6)
    M = A[0, 0]  # [H, m, 2, 2]
    for init in (None, h0):
        o_ref, h_ref = block_scan(q, k, v, M.expand(1, T, *M.shape), init, impl="recurrent")
        o, h = block_scan(q, k, v, M, init, impl="chunk", chunk_size=chunk)
        assert rel(o, o_ref) < 1e-12 and rel(h, h_ref) < 1e-12
        o2, h2 = block_scan(q, k, v, M, init, impl="recurrent")
        assert torch.equal(o2, o_ref) and torch.equal(h2, h_ref)


def test_block_scan_time_invariant_gradients_match_reference():
    q, k, v, A, h0 = osc_inputs(2, 13, 2, 3, 3, batch_A=False)
    grads = []
    for impl in ("recurrent", "chunk"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, A[0, 0], h0)]
        o, h = block_scan(*leaves, impl=impl, chunk_size=4)
        w_o = torch.randn(o.shape, dtype=F64, generator=gen(5))
        w_h = torch.randn(h.shape, dtype=F64, generator=gen(6))
        ((o * w_o).sum() + (h * w_h).sum()).backward()
        grads.append([t.grad for t in leaves])
    for g_ref, g in zip(*grads):
        assert torch.isfinite(g).all() and rel(g, g_ref) < 1e-10


def test_block_powers():
    M = torch.randn(3, 4, 2, 2, dtype=F64, generator=gen(9))
    pw = block_powers(M, 11)
    for d in range(11):
        assert torch.allclose(pw[d], torch.linalg.matrix_power(M, d), atol=1e-12)


def test_block_scan_reference_is_the_block_diagonal_recurrence():
    q, k, v, A, _ = osc_inputs(1, 6, 2, 3, 2)
    o_ref, _ = block_scan(q, k, v, A, impl="recurrent")
    h = torch.zeros(1, 2, 6, 2, dtype=F64)
    outs = []
    for t in range(6):
        full = torch.block_diag(*A[0, t, 0]), torch.block_diag(*A[0, t, 1])
        h = (
            torch.stack([full[0] @ h[0, 0], full[1] @ h[0, 1]])[None]
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        )
        outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], h))
    assert rel(o_ref, torch.stack(outs, 1)) < 1e-13


def test_block_scan_fp32_and_half():
    q, k, v, A, h0 = osc_inputs(2, 40, 2, 8, 8, scale=0.5)
    o_ref, h_ref = block_scan(q, k, v, A, h0, impl="recurrent")
    o, h = block_scan(*(t.float() for t in (q, k, v, A, h0)), impl="chunk", chunk_size=8)
    assert o.dtype == torch.float32 and rel(o.double(), o_ref) < 1e-5 and rel(h.double(), h_ref) < 1e-5
    o_ref0, _ = block_scan(q, k, v, A, impl="recurrent")
    for half in (torch.bfloat16, torch.float16):
        o, _ = block_scan(*(t.to(half) for t in (q, k, v, A)), impl="chunk", chunk_size=8)
        assert o.dtype == half and float((o.double() - o_ref0).norm() / o_ref0.norm()) < 0.05


def test_block_scan_gradients_match_reference():
    q, k, v, A, h0 = osc_inputs(2, 13, 2, 3, 3)
    grads = []
    for impl in ("recurrent", "chunk"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, A, h0)]
        o, h = block_scan(*leaves, impl=impl, chunk_size=4)
        w_o = torch.randn(o.shape, dtype=F64, generator=gen(5))
        w_h = torch.randn(h.shape, dtype=F64, generator=gen(6))
        ((o * w_o).sum() + (h * w_h).sum()).backward()
        grads.append([t.grad for t in leaves])
    for g_ref, g in zip(*grads):
        assert torch.isfinite(g).all() and rel(g, g_ref) < 1e-10


def test_block_scan_gradcheck_small():
    q, k, v, A, _ = osc_inputs(1, 5, 1, 2, 2)
    args = [t.clone().requires_grad_(True) for t in (q, k, v, A)]
    assert torch.autograd.gradcheck(lambda *a: block_scan(*a, impl="chunk", chunk_size=2)[0], args)


def test_block_scan_bad_shapes():
    q, k, v, A, h0 = osc_inputs(2, 4, 2, 3, 2)
    with pytest.raises(ValueError, match="A"):
        block_scan(q, k, v, A[..., 0])  # not [.., b, b]
    with pytest.raises(ValueError, match="n_blocks"):
        block_scan(q, k, v, A[:, :, :, :2])  # 2 blocks of 2 != N = 6
    with pytest.raises(ValueError, match="B or 1"):
        block_scan(q, k, v, A[:, :3])  # wrong T
    with pytest.raises(ValueError, match="2x2"):
        block_scan(q, k, v, torch.randn(2, 4, 2, 2, 3, 3, dtype=F64), impl="chunk")  # 3x3 blocks
    with pytest.raises(ValueError, match="time-invariant"):
        block_scan(q, k, v, A[0, 0, :1])  # [1, m, 2, 2] for H = 2
    with pytest.raises(ValueError, match="initial_state"):
        block_scan(q, k, v, A, h0[:1])
    with pytest.raises(ValueError, match="chunk_size"):
        block_scan(q, k, v, A, chunk_size=0)
    with pytest.raises(ValueError, match="impl"):
        block_scan(q, k, v, A, impl="scan")


def test_linoss_im_blocks_solve_the_implicit_step_and_are_stable():
    g = gen(7)
    a = 3 * torch.rand(50, dtype=F64, generator=g)
    dt = torch.rand(50, dtype=F64, generator=g)
    M = linoss_im_blocks(a, dt)
    # implicit step z' = z + dt (-a x' ), x' = x + dt z'  <=>  [[1, dt a], [-dt, 1]] [z'; x'] = [z; x]
    lhs = torch.stack(
        [torch.stack([torch.ones_like(a), dt * a], -1), torch.stack([-dt, torch.ones_like(a)], -1)], -2
    )
    assert torch.allclose(lhs @ M, torch.eye(2, dtype=F64).expand_as(M), atol=1e-12)
    eig = torch.linalg.eigvals(M).abs()
    assert torch.allclose(eig, (1 / (1 + dt * dt * a)).sqrt()[:, None].expand_as(eig), atol=1e-7)
    zeta = torch.rand(50, dtype=F64, generator=g)
    assert torch.allclose(linoss_im_blocks(a, dt, zeta), (1 - zeta)[:, None, None] * M)


# ---------------------------------------------------------------------------------------------
# structural claims of the candidates (documented in their docstrings)


def test_cayley_circulant_is_exactly_orthogonal_without_gate():
    m = get_candidate("cayley-circulant").build(32, decay_gate=False).double()
    with torch.no_grad():
        m.omega_proj.weight.normal_()
        mag, phase = m.eigenvalues(torch.randn(2, 5, 32, dtype=F64, generator=gen(1)))  # [B, T, H, 1, nb]
    lam = torch.polar(mag, phase)
    assert torch.equal(mag, torch.ones_like(mag))
    Q = circulant_matrix(circulant_from_eigenvalues(lam[..., 0, :], 16))
    eye = torch.eye(16, dtype=F64)
    assert torch.allclose(Q.transpose(-1, -2) @ Q, eye.expand_as(Q), atol=1e-12)


@pytest.mark.parametrize("terms,contractive", [(4, True), (8, True), (2, False), (3, False)])
def test_neumann_orthogonal_norm(terms, contractive):
    m = get_candidate("neumann-orthogonal").build(32, neumann_terms=terms, decay_gate=False).double()
    with torch.no_grad():
        m.s_proj.weight.normal_()  # large S: the Frobenius scaling must bound it
        A = m.transition(torch.randn(2, 5, 32, dtype=F64, generator=gen(2)))
        S = m.skew(torch.randn(2, 5, 32, dtype=F64, generator=gen(2)))
    assert float(torch.linalg.matrix_norm(S, ord=2).max()) <= m.rho_max + 1e-12
    smax = torch.linalg.matrix_norm(A, ord=2)
    eye = torch.eye(16, dtype=F64)
    assert float((A.transpose(-1, -2) @ A - eye).abs().max()) < 2 * m.rho_max**terms / (1 - m.rho_max) + 1e-9
    if contractive:
        assert float(smax.max()) <= 1 + 1e-12
    else:
        assert float(smax.max()) > 1


def test_circulant_diagonal_transition_is_contractive_and_matches_its_factors():
    m = get_candidate("circulant-diagonal").build(32).double()
    x = torch.randn(2, 5, 32, dtype=F64, generator=gen(3))
    with torch.no_grad():
        A = m.transition(x)
        d1, (r, theta), d2 = m.factors(x)
        lam = torch.polar(r, theta)
        h = torch.randn(2, 5, 4, 16, 3, dtype=F64, generator=gen(4))
        structured = d1[..., None] * circulant_matvec(lam[..., None], d2[..., None] * h, dim=-2)
    assert float(torch.linalg.matrix_norm(A, ord=2).max()) < 1
    assert torch.allclose(A @ h, structured, atol=1e-12)


def test_oscgate_state_stays_finite_on_long_sequences():
    m = get_candidate("oscgate-ssm").build(32)
    x = torch.randn(1, 4096, 32, generator=gen(8))
    with torch.no_grad():
        y = m(x)
    assert torch.isfinite(y).all() and float(y.abs().max()) < 1e4
