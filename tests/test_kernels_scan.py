"""Fast scans against their loop references: kernels/diag_scan.py."""

from __future__ import annotations

import math

import pytest
import torch

from harness.kernels.diag_scan import diag_scan, diag_scan_chunk

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 2e-4}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# -- diag_scan ----------------------------------------------------------------------------------


def make(kind: str, T: int = 37, dtype=F64, seed: int = 0, B=2, H=3, N=5, P=4):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    q, k, v = r(B, T, H, N), r(B, T, H, N), r(B, T, H, P)
    u = torch.rand(B, T, H, N, generator=g, dtype=F64)
    if kind == "pos":
        d = u
    elif kind == "slow":  # near 1: the factorised intra-chunk path at full chunk length
        d = 1 - 0.05 * u
    elif kind == "neg":
        d = 2 * u - 1
    elif kind == "complex":
        d = torch.polar(u, 2 * math.pi * torch.rand(B, T, H, N, generator=g, dtype=F64))
        q = torch.complex(q, r(B, T, H, N))
        v = torch.complex(v, r(B, T, H, P))
    elif kind == "neg-complex-qv":  # real signed decay, complex q and v (mixed dtypes promote)
        d = 2 * u - 1
        q = torch.complex(q, r(B, T, H, N))
        v = torch.complex(v, r(B, T, H, P))
    elif kind == "tiny":  # zeros and magnitudes far below the clamp: forces the pairwise path
        d = u * 1e-6
        d[:, ::3] = 0.0
        d[:, 1::5] = -1e-300
    else:
        raise AssertionError(kind)
    h0 = r(B, H, N, P).to(q.dtype if q.is_complex() else F64)
    if dtype == F32:
        return tuple(t.to(torch.complex64 if t.is_complex() else F32) for t in (q, k, v, d, h0))
    return q, k, v, d, h0


@pytest.mark.parametrize("kind", ["pos", "slow", "neg", "complex", "neg-complex-qv", "tiny"])
@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_diag_scan_chunk_matches_recurrent(kind, chunk, dtype):
    q, k, v, d, h0 = make(kind, dtype=dtype)
    o_ref, s_ref = diag_scan(q, k, v, d, h0, impl="recurrent")
    o, s = diag_scan(q, k, v, d, h0, impl="chunk", chunk_size=chunk)
    assert o.dtype == o_ref.dtype and s.shape == s_ref.shape
    assert rel_err(o, o_ref) < TOL[dtype]
    assert rel_err(s, s_ref) < TOL[dtype]


@pytest.mark.parametrize("intra", ["factor", "pairwise"])
@pytest.mark.parametrize("kind", ["slow", "neg", "complex"])
def test_diag_scan_intra_paths(intra, kind):
    q, k, v, d, h0 = make(kind, T=50)
    if intra == "factor" and kind != "slow":
        d = d / d.abs().clamp_min(1e-12) * (1 - 0.05 * d.abs())  # keep the spread small
    o_ref, s_ref = diag_scan(q, k, v, d, h0, impl="recurrent")
    o, s = diag_scan_chunk(q, k, v, d, h0, chunk_size=32, intra=intra)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10


def test_diag_scan_factor_refuses_unsafe_spread():
    q, k, v, d, h0 = make("tiny")
    with pytest.raises(ValueError, match="unsafe"):
        diag_scan_chunk(q, k, v, d, h0, chunk_size=32, intra="factor")


def test_diag_scan_no_initial_state_and_T1():
    q, k, v, d, _ = make("pos", T=1)
    o_ref, s_ref = diag_scan(q, k, v, d, impl="recurrent")
    o, s = diag_scan(q, k, v, d, impl="chunk")
    assert rel_err(o, o_ref) < 1e-12 and rel_err(s, s_ref) < 1e-12


@pytest.mark.parametrize("kind", ["pos", "neg", "complex", "tiny"])
def test_diag_scan_gradients_match_reference(kind):
    q, k, v, d, h0 = make(kind, T=11, B=1, H=2, N=3, P=2)
    if kind == "tiny":
        d = d + 1e-3  # gradients of the clamped region are zero by design; test near it instead
    leaves = [t.clone().requires_grad_() for t in (q, k, v, d, h0)]
    g = torch.Generator().manual_seed(5)
    w_o = torch.randn(1, 11, 2, 2, generator=g, dtype=F64)
    w_s = torch.randn(1, 2, 3, 2, generator=g, dtype=F64)

    def loss(impl):
        o, s = diag_scan(*leaves[:4], leaves[4], impl=impl, chunk_size=4)
        if o.is_complex():  # a real loss touching both parts
            return (o.real * w_o).sum() + (o.imag * w_o).sum() + (s.real * w_s).sum() - (s.imag * w_s).sum()
        return (o * w_o).sum() + (s * w_s).sum()

    g_ref = torch.autograd.grad(loss("recurrent"), leaves)
    g_chunk = torch.autograd.grad(loss("chunk"), leaves)
    for a, b in zip(g_chunk, g_ref, strict=True):
        assert torch.isfinite(torch.view_as_real(a) if a.is_complex() else a).all()
        assert rel_err(a, b) < 1e-9


def test_diag_scan_zero_decay_gradients_finite():
    q, k, v, d, h0 = make("tiny", T=20, dtype=F32)
    d = d.clone().requires_grad_()
    o, s = diag_scan(q, k, v, d, h0, impl="chunk", chunk_size=8)
    (o.sum() + s.sum()).backward()
    assert torch.isfinite(d.grad).all()


def test_diag_scan_half_precision_computes_in_fp32():
    q, k, v, d, h0 = make("pos", dtype=F32)
    o_ref, _ = diag_scan(q, k, v, d, h0, impl="recurrent")
    o, s = diag_scan(*(t.bfloat16() for t in (q, k, v, d, h0)), impl="chunk", chunk_size=16)
    assert o.dtype == torch.bfloat16 and torch.isfinite(o.float()).all()
    assert float((o.float() - o_ref).norm() / o_ref.norm()) < 0.05


def test_diag_scan_bad_shapes():
    q = torch.zeros(2, 5, 3, 4)
    v = torch.zeros(2, 5, 3, 6)
    with pytest.raises(ValueError, match=r"q, k, decay \[B, T, H, N\]"):
        diag_scan(q, q, v, torch.zeros(2, 5, 3, 3))
    with pytest.raises(ValueError, match=r"v \[B, T, H, P\]"):
        diag_scan(q, q, torch.zeros(2, 4, 3, 6), q)
    with pytest.raises(ValueError, match="initial_state"):
        diag_scan(q, q, v, q, initial_state=torch.zeros(2, 3, 6, 4))
    with pytest.raises(ValueError, match="impl"):
        diag_scan(q, q, v, q, impl="scan")
    with pytest.raises(ValueError, match="chunk_size"):
        diag_scan(q, q, v, q, chunk_size=0)


@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
def test_diag_scan_log_decay_input(impl):
    q, k, v, d, h0 = make("pos")
    d = d.clamp_min(1e-3)
    o_ref, s_ref = diag_scan(q, k, v, d, h0, impl="recurrent")
    o, s = diag_scan(q, k, v, torch.log(d), h0, impl=impl, chunk_size=16, log_decay=True)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10
    with pytest.raises(ValueError, match="log_decay"):
        diag_scan(q, k, v, torch.polar(d, d), h0, log_decay=True)
