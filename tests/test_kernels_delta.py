"""Chunkwise delta rule (WY/UT, trsm and Newton-Schulz solves) and DeltaProduct against the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.kernels.delta_rule import (
    delta_product,
    delta_rule,
    newton_schulz_solve,
    newton_schulz_steps,
    unit_lower_inverse,
)

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 2e-4}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def make(T=37, B=2, H=3, N=6, P=4, beta_max=2.0, decay="none", dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, N, generator=g, dtype=F64)
    k = F.normalize(torch.randn(B, T, H, N, generator=g, dtype=F64), dim=-1)
    v = torch.randn(B, T, H, P, generator=g, dtype=F64)
    beta = beta_max * torch.rand(B, T, H, generator=g, dtype=F64)
    u = torch.rand(B, T, H, generator=g, dtype=F64)
    d = {"none": None, "rand": u, "slow": 1 - 0.05 * u, "tiny": u * 1e-8}[decay]
    if decay == "tiny":
        d[:, ::4] = 0.0
    h0 = torch.randn(B, H, N, P, generator=g, dtype=F64)
    out = [q, k, v, beta, d, h0]
    return [None if t is None else t.to(dtype) for t in out]


@pytest.mark.parametrize("solve", ["trsm", "newton_schulz"])
@pytest.mark.parametrize("decay", ["none", "rand", "slow", "tiny"])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_delta_rule_chunk_matches_recurrent(solve, decay, chunk, dtype):
    q, k, v, beta, d, h0 = make(decay=decay, dtype=dtype)
    o_ref, s_ref = delta_rule(q, k, v, beta, d, h0, impl="recurrent")
    o, s = delta_rule(q, k, v, beta, d, h0, impl="chunk", chunk_size=chunk, solve=solve)
    assert o.dtype == dtype and s.shape == s_ref.shape
    assert rel_err(o, o_ref) < TOL[dtype], "output"
    assert rel_err(s, s_ref) < TOL[dtype], "state"


@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_delta_rule_no_initial_state(beta_max):
    q, k, v, beta, _, _ = make(T=50, beta_max=beta_max)
    o_ref, s_ref = delta_rule(q, k, v, beta, impl="recurrent")
    o, s = delta_rule(q, k, v, beta, chunk_size=16)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10


def test_delta_rule_reference_is_the_stated_recurrence():
    # S_t = a_t (I - b k k^T) S_{t-1} + b k v^T written out with explicit matrices
    q, k, v, beta, d, h0 = make(T=6, B=1, H=1, N=3, P=2, decay="rand")
    S = h0[0, 0]
    for t in range(6):
        kt = k[0, t, 0][:, None]
        A = d[0, t, 0] * (torch.eye(3, dtype=F64) - beta[0, t, 0] * kt @ kt.T)
        S = A @ S + beta[0, t, 0] * kt @ v[0, t, 0][None]
    o, s = delta_rule(q, k, v, beta, d, h0, impl="recurrent")
    assert rel_err(s[0, 0], S) < 1e-12
    assert rel_err(o[0, -1, 0], S.T @ q[0, -1, 0]) < 1e-12


@pytest.mark.parametrize("L", [1, 2, 3, 16, 33, 64])
def test_newton_schulz_is_exact_inverse(L):
    g = torch.Generator().manual_seed(L)
    strict = (0.3 * torch.randn(4, L, L, generator=g, dtype=F64)).tril(-1)
    A = torch.eye(L, dtype=F64) + strict
    ref = torch.linalg.inv(A)
    assert newton_schulz_steps(L) == (0 if L == 1 else (L - 1).bit_length())
    X = unit_lower_inverse(A, "newton_schulz")
    assert rel_err(X, ref) < 1e-9
    rhs = torch.randn(4, L, 5, generator=g, dtype=F64)
    assert rel_err(newton_schulz_solve(strict, rhs), ref @ rhs) < 1e-9
    assert rel_err(unit_lower_inverse(A, "trsm"), ref) < 1e-9


def test_newton_schulz_one_step_short_is_not_exact():
    # the step count is tight: with ceil(log2 L) - 1 steps the nilpotent error is still there
    L = 16
    g = torch.Generator().manual_seed(0)
    strict = torch.randn(1, L, L, generator=g, dtype=F64).tril(-1)
    A = torch.eye(L, dtype=F64) + strict
    X = torch.eye(L, dtype=F64)
    for _ in range(newton_schulz_steps(L) - 1):
        X = X @ (2 * torch.eye(L, dtype=F64) - A @ X)
    assert rel_err(X, torch.linalg.inv(A)) > 1e-3


@pytest.mark.parametrize("solve", ["trsm", "newton_schulz"])
@pytest.mark.parametrize("decay", ["none", "rand"])
def test_delta_rule_gradients_match_reference(solve, decay):
    q, k, v, beta, d, h0 = make(T=11, B=1, H=2, N=3, P=2, decay=decay)
    leaves = [None if t is None else t.clone().requires_grad_() for t in (q, k, v, beta, d, h0)]
    g = torch.Generator().manual_seed(3)
    w_o = torch.randn(1, 11, 2, 2, generator=g, dtype=F64)
    w_s = torch.randn(1, 2, 3, 2, generator=g, dtype=F64)

    def grads(impl):
        o, s = delta_rule(*leaves, impl=impl, chunk_size=4, solve=solve)
        loss = (o * w_o).sum() + (s * w_s).sum()
        return torch.autograd.grad(loss, [t for t in leaves if t is not None])

    for a, b in zip(grads("chunk"), grads("recurrent"), strict=True):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-9


def test_delta_rule_gradcheck_small():
    q, k, v, beta, d, h0 = make(T=5, B=1, H=1, N=2, P=2, decay="rand")
    leaves = tuple(t.clone().requires_grad_() for t in (q, k, v, beta, d, h0))
    assert torch.autograd.gradcheck(lambda *a: delta_rule(*a, chunk_size=2)[0], leaves)


def test_delta_rule_zero_decay_gradients_finite():
    q, k, v, beta, d, h0 = make(T=20, decay="tiny", dtype=F32)
    d = d.clone().requires_grad_()
    o, s = delta_rule(q, k, v, beta, d, h0, chunk_size=8)
    (o.sum() + s.sum()).backward()
    assert torch.isfinite(d.grad).all()


def test_delta_rule_half_precision():
    q, k, v, beta, d, h0 = make(decay="slow", dtype=F32)
    o_ref, _ = delta_rule(q, k, v, beta, d, h0, impl="recurrent")
    o, s = delta_rule(*(t.bfloat16() for t in (q, k, v, beta, d, h0)), chunk_size=16)
    assert o.dtype == torch.bfloat16 and torch.isfinite(o.float()).all()
    assert float((o.float() - o_ref).norm() / o_ref.norm()) < 0.05


# -- DeltaProduct -------------------------------------------------------------------------------


def delta_product_loop(q, k, v, beta, decay, h0):
    """Independent reference: explicit per-token products of Householder steps."""
    B, T, nh, H, N = k.shape
    S = h0.clone()
    outs = []
    for t in range(T):
        if decay is not None:
            S = decay[:, t, :, None, None] * S
        for i in range(nh):
            kt, bt = k[:, t, i], beta[:, t, i, :, None, None]
            S = (
                S
                - bt * kt[..., :, None] * (kt[..., None, :] @ S)
                + bt * kt[..., :, None] * v[:, t, i, :, None, :]
            )
        outs.append(torch.einsum("bhn,bhnp->bhp", q[:, t], S))
    return torch.stack(outs, 1), S


@pytest.mark.parametrize("nh", [1, 2, 3])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
def test_delta_product(nh, gated, impl):
    g = torch.Generator().manual_seed(nh)
    B, T, H, N, P = 2, 13, 2, 4, 3
    q = torch.randn(B, T, H, N, generator=g, dtype=F64)
    k = F.normalize(torch.randn(B, T, nh, H, N, generator=g, dtype=F64), dim=-1)
    v = torch.randn(B, T, nh, H, P, generator=g, dtype=F64)
    beta = 2 * torch.rand(B, T, nh, H, generator=g, dtype=F64)
    d = torch.rand(B, T, H, generator=g, dtype=F64) if gated else None
    h0 = torch.randn(B, H, N, P, generator=g, dtype=F64)
    o_ref, s_ref = delta_product_loop(q, k, v, beta, d, h0)
    o, s = delta_product(q, k, v, beta, d, h0, impl=impl, chunk_size=7)
    assert o.shape == (B, T, H, P)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10


def test_bad_shapes_and_options():
    q = torch.zeros(2, 5, 3, 4)
    v = torch.zeros(2, 5, 3, 6)
    beta = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match=r"q, k \[B, T, H, N\]"):
        delta_rule(q, torch.zeros(2, 5, 3, 5), v, beta)
    with pytest.raises(ValueError, match=r"beta must be \[B, T, H\]"):
        delta_rule(q, q, v, torch.zeros(2, 5, 3, 1))
    with pytest.raises(ValueError, match=r"decay must be \[B, T, H\]"):
        delta_rule(q, q, v, beta, decay=q)
    with pytest.raises(ValueError, match="initial_state"):
        delta_rule(q, q, v, beta, initial_state=torch.zeros(2, 3, 6, 4))
    with pytest.raises(ValueError, match="impl"):
        delta_rule(q, q, v, beta, impl="scan")
    with pytest.raises(ValueError, match="solve"):
        delta_rule(q, q, v, beta, solve="cholesky")
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(q, q, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="real"):
        delta_rule(q.to(torch.complex64), q, v, beta)
    with pytest.raises(ValueError, match=r"k \[B, T, n_h, H, N\]"):
        delta_product(q, q, v, beta)
    with pytest.raises(ValueError, match="matching"):
        delta_product(q, torch.zeros(2, 5, 2, 3, 4), torch.zeros(2, 5, 3, 3, 6), torch.zeros(2, 5, 2, 3))


def test_rotated_frame_identity_of_oh_deltaproduct():
    """h_t = R(theta_t)[(I - b k k^T) h_{t-1} + b k v^T] with explicit block rotations equals the delta
    rule on keys rotated by -phi_{t-1} and queries by -phi_t (phi = running sum of theta), read out."""
    from harness.candidates.deltanet import rotate_pairs

    g = torch.Generator().manual_seed(7)
    T, N, P = 9, 4, 3
    q = torch.randn(1, T, 1, N, generator=g, dtype=F64)
    k = F.normalize(torch.randn(1, T, 1, N, generator=g, dtype=F64), dim=-1)
    v = torch.randn(1, T, 1, P, generator=g, dtype=F64)
    beta = 2 * torch.rand(1, T, 1, generator=g, dtype=F64)
    theta = 3 * torch.randn(1, T, 1, N // 2, generator=g, dtype=F64)

    def R(angles):  # explicit block-diagonal rotation matrix
        M = torch.zeros(N, N, dtype=F64)
        for m, a in enumerate(angles):
            c, s = torch.cos(a), torch.sin(a)
            M[2 * m : 2 * m + 2, 2 * m : 2 * m + 2] = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
        return M

    h = torch.zeros(N, P, dtype=F64)
    outs = []
    for t in range(T):
        kt = k[0, t, 0][:, None]
        h = R(theta[0, t, 0]) @ (
            (torch.eye(N, dtype=F64) - beta[0, t, 0] * kt @ kt.T) @ h + beta[0, t, 0] * kt @ v[0, t, 0][None]
        )
        outs.append(h.T @ q[0, t, 0])
    phi = theta.cumsum(1)
    o, _ = delta_rule(rotate_pairs(q, -phi), rotate_pairs(k, -(phi - theta)), v, beta, chunk_size=4)
    assert rel_err(o[0, :, 0], torch.stack(outs)) < 1e-12


def test_delta_product_gradients_match_recurrent():
    g = torch.Generator().manual_seed(11)
    B, T, nh, H, N, P = 1, 7, 3, 2, 3, 2
    leaves = [
        torch.randn(B, T, H, N, generator=g, dtype=F64),
        F.normalize(torch.randn(B, T, nh, H, N, generator=g, dtype=F64), dim=-1),
        torch.randn(B, T, nh, H, P, generator=g, dtype=F64),
        2 * torch.rand(B, T, nh, H, generator=g, dtype=F64),
        torch.rand(B, T, H, generator=g, dtype=F64),
        torch.randn(B, H, N, P, generator=g, dtype=F64),
    ]
    leaves = [t.requires_grad_() for t in leaves]
    w = torch.randn(B, T, H, P, generator=g, dtype=F64)

    def grads(impl):
        o, s = delta_product(*leaves, impl=impl, chunk_size=5)
        return torch.autograd.grad((o * w).sum() + s.square().sum(), leaves)

    for a, b in zip(grads("chunk"), grads("recurrent"), strict=True):
        assert torch.isfinite(a).all() and rel_err(a, b) < 1e-9
