"""The scans family kernels against their references: every algorithm == the sequential loop
(float64 tight, float32 looser); Woodbury == dense solve; Neumann converges at rate rho; WY == loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.bench.algorithms import resolvent as rv
from harness.bench.algorithms import scan_algorithms as sa
from harness.bench.algorithms import wy_vs_ssd as wy

# -- dense linear recurrence ----------------------------------------------------------------------------


def _dense(T: int, dtype=torch.float64, B=2, H=3, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = (0.9 * torch.randn(B, T, H, N, N, generator=g, dtype=torch.float64) / math.sqrt(N)).to(dtype)
    b = torch.randn(B, T, H, N, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, H, N, generator=g, dtype=torch.float64).to(dtype)
    return A, b, h0


@pytest.mark.parametrize("impl", [i for i in sa.IMPLS if i != "sequential"])
@pytest.mark.parametrize("T", [1, 2, 3, 7, 16, 33, 100])
def test_dense_scan_matches_sequential_float64(impl, T):
    A, b, h0 = _dense(T)
    for init in (None, h0):
        ref, ref_T = sa.scan_sequential(A, b, init)
        for chunk in (1, 4, 64) if impl == "chunkwise" else (64,):
            h, h_T = sa.dense_linear_scan(A, b, init, impl=impl, chunk_size=chunk)
            assert h.shape == ref.shape and h_T.shape == ref_T.shape
            assert (h - ref).abs().max() <= 1e-12 * ref.abs().max(), (impl, T, chunk)
            assert torch.allclose(h_T, ref_T, rtol=0, atol=1e-12 * ref.abs().max().item())


@pytest.mark.parametrize("impl", sa.IMPLS)
def test_dense_scan_float32_close_to_float64(impl):
    A, b, h0 = _dense(257, torch.float32)
    ref, _ = sa.scan_sequential(A.double(), b.double(), h0.double())
    h, _ = sa.dense_linear_scan(A, b, h0, impl=impl, chunk_size=16)
    assert h.dtype == torch.float32
    assert (h.double() - ref).norm() / ref.norm() < 1e-5


def test_dense_scan_op_counts_and_errors():
    A, b, _ = _dense(64, B=1, H=1)
    counts = {}
    for impl in sa.IMPLS:
        with sa.count_ops() as c:
            sa.dense_linear_scan(A, b, impl=impl, chunk_size=8)
        counts[impl] = (c.matmat, c.matvec)
    assert counts["sequential"] == (0, 64)
    assert counts["hillis_steele"][0] == sum(64 - 2**k for k in range(6))  # T log T
    assert counts["cyclic_reduction"][0] == 63  # T - 1
    assert counts["blelloch"][0] == 2 * 63
    assert counts["chunkwise"][0] == 8 * sum(8 - 2**k for k in range(3))
    with pytest.raises(ValueError, match=r"A \[B, T, H, N, N\]"):
        sa.dense_linear_scan(A[..., :3], b)
    with pytest.raises(ValueError, match="unknown impl"):
        sa.dense_linear_scan(A, b, impl="nope")
    with pytest.raises(ValueError, match="initial_state"):
        sa.dense_linear_scan(A, b, torch.zeros(2, 2, 2))


# -- DPLR resolvent -------------------------------------------------------------------------------------


def test_hippo_legs_dplr_reconstructs_the_matrix():
    N = 12
    A, p = rv.hippo_legs_matrix(N)
    lam, P, Q = rv.hippo_legs_dplr(N)
    S = A + p[:, None] * p[None, :]
    _, V = torch.linalg.eigh(1j * (S + 0.5 * torch.eye(N, dtype=torch.float64)).to(torch.complex128))
    rebuilt = V @ (torch.diag(lam) + P @ Q.conj().T) @ V.conj().T
    assert (rebuilt - A).abs().max() < 1e-10
    assert torch.allclose(lam.real, torch.full((N,), -0.5, dtype=torch.float64))


def _dplr(delta: float, dtype=torch.complex128, T=6, N=16):
    lam, P, Q = rv.hippo_legs_dplr(N, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, T, 1, N, generator=g, dtype=torch.float64).to(dtype)
    d = torch.full((2, T, 1), delta, dtype=torch.float64 if dtype == torch.complex128 else torch.float32)
    return lam[None], P[None], Q[None], d, x


def test_woodbury_matches_dense_solve():
    for delta in (1e-3, 0.1, 1.0):
        args = _dplr(delta)
        ref, none = rv.dplr_resolvent(*args, impl="dense")
        wb, _ = rv.dplr_resolvent(*args, impl="woodbury")
        assert none is None and (wb - ref).norm() / ref.norm() < 1e-12
    args32 = _dplr(0.1, torch.complex64)
    ref, _ = rv.dplr_resolvent(
        *(a.to(torch.complex128) if a.is_complex() else a.double() for a in args32), impl="dense"
    )
    wb, _ = rv.dplr_resolvent(*args32, impl="woodbury")
    assert wb.dtype == torch.complex64 and (wb.to(torch.complex128) - ref).norm() / ref.norm() < 1e-5


def test_neumann_converges_at_rate_rho():
    args = _dplr(1e-3)  # rho ~ 0.1 at N=16
    rho = rv.neumann_radius(*args[:4]).max().item()
    assert 0 < rho < 0.5
    ref, _ = rv.dplr_resolvent(*args, impl="dense")
    errs = []
    for k in (0, 1, 2, 4, 8):
        y, _ = rv.dplr_resolvent(*args, impl="neumann", k=k)
        errs.append(((y - ref).norm() / ref.norm()).item())
    assert all(a > b for a, b in zip(errs[:-1], errs[1:]))
    assert errs[-1] < 1e-8
    # a series that does not converge (rho ~ 1) keeps its error however many terms are added
    args = _dplr(1.0)
    assert rv.neumann_radius(*args[:4]).max().item() > 0.99
    ref, _ = rv.dplr_resolvent(*args, impl="dense")
    y8, _ = rv.dplr_resolvent(*args, impl="neumann", k=8)
    assert (y8 - ref).norm() / ref.norm() > 1e-2


def test_resolvent_shape_errors():
    lam, P, Q, d, x = _dplr(0.1)
    with pytest.raises(ValueError, match=r"x \[B, T, H=1, N=16\]"):
        rv.dplr_resolvent(lam, P, Q, d, x[..., :3])
    with pytest.raises(ValueError, match="unknown impl"):
        rv.dplr_resolvent(lam, P, Q, d, x, impl="nope")


# -- DeltaNet chunk: naive WY vs block-SSD ------------------------------------------------------------------


def _delta(T: int, dtype=torch.float64, B=2, H=2, Dk=8, Dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, Dk, generator=g, dtype=torch.float64)
    k = F.normalize(torch.randn(B, T, H, Dk, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, Dv, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64) * 1.9
    S0 = torch.randn(B, H, Dk, Dv, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (q, k, v, beta, S0)]


@pytest.mark.parametrize("impl", ["naive_wy", "block_ssd"])
@pytest.mark.parametrize("T", [1, 5, 16, 37])
def test_wy_and_block_ssd_match_sequential(impl, T):
    q, k, v, beta, S0 = _delta(T)
    for init in (None, S0):
        ref, S_ref = wy.delta_rule_chunk(q, k, v, beta, init, impl="sequential")
        for chunk in (1, 4, 16):
            o, S = wy.delta_rule_chunk(q, k, v, beta, init, impl=impl, chunk_size=chunk)
            assert (o - ref).abs().max() < 1e-11 * ref.abs().max(), (impl, T, chunk)
            assert (S - S_ref).abs().max() < 1e-11 * S_ref.abs().max()
    q, k, v, beta, S0 = _delta(T, torch.float32)
    ref, _ = wy.delta_rule_chunk(*(t.double() for t in (q, k, v, beta, S0)), impl="sequential")
    o, _ = wy.delta_rule_chunk(q, k, v, beta, S0, impl=impl, chunk_size=8)
    assert (o.double() - ref).norm() / ref.norm() < 1e-5


def test_sequential_matches_the_candidates_delta_rule_kernel():
    dr = pytest.importorskip("harness.kernels.delta_rule")
    q, k, v, beta, S0 = _delta(21)
    ref, S_ref = dr.delta_rule(q, k, v, beta, initial_state=S0, impl="recurrent")
    o, S = wy.delta_rule_chunk(q, k, v, beta, S0, impl="sequential")
    assert (o - ref).abs().max() < 1e-12 * ref.abs().max() and (
        S - S_ref
    ).abs().max() < 1e-12 * S_ref.abs().max()
    o, _ = wy.delta_rule_chunk(q, k, v, beta, S0, impl="block_ssd", chunk_size=8)
    assert (o - ref).abs().max() < 1e-11 * ref.abs().max()


def test_delta_shape_errors():
    q, k, v, beta, S0 = _delta(4)
    with pytest.raises(ValueError, match="beta"):
        wy.delta_rule_chunk(q, k, v, beta[..., :1])
    with pytest.raises(ValueError, match="initial_state"):
        wy.delta_rule_chunk(q, k, v, beta, S0[..., :2])
    with pytest.raises(ValueError, match="unknown impl"):
        wy.delta_rule_chunk(q, k, v, beta, impl="nope")
