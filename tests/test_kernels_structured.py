"""Structured-transition kernels against their references: dense_scan, perm_diag_scan, monomial."""

from __future__ import annotations

import pytest
import torch

from harness.kernels.dense_scan import dense_scan, linear_recurrence_dense
from harness.kernels.monomial import (
    block_diag_apply,
    block_diag_dense,
    block_monomial,
    gs_monomial,
    inverse_permutation,
    monarch_apply,
    monarch_dense,
    permute_rows,
    stride_permutation,
)
from harness.kernels.perm_diag_scan import (
    pd_apply,
    pd_compose,
    pd_dense,
    pd_recurrence,
    pd_step,
    perm_diag_scan,
)


def _rand(*shape, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        real = torch.randn(*shape, generator=g, dtype=torch.float64)
        imag = torch.randn(*shape, generator=g, dtype=torch.float64)
        return (torch.complex(real, imag) * scale).to(dtype)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


# -- dense scan -------------------------------------------------------------------------------

DENSE_DTYPES = [(torch.float64, 1e-12), (torch.complex128, 1e-12), (torch.float32, 1e-5)]


@pytest.mark.parametrize("dtype,tol", DENSE_DTYPES)
@pytest.mark.parametrize("T,chunk", [(1, 8), (7, 4), (40, 16), (33, 64), (64, 64)])
def test_dense_recurrence_chunk_matches_recurrent(dtype, tol, T, chunk):
    B, H, N, P = 2, 3, 5, 4
    A = _rand(B, T, H, N, N, dtype=dtype, scale=0.45, seed=1)
    b = _rand(B, T, H, N, P, dtype=dtype, seed=2)
    h0 = _rand(B, H, N, P, dtype=dtype, seed=3)
    ref = linear_recurrence_dense(A, b, h0, impl="recurrent")
    out = linear_recurrence_dense(A, b, h0, impl="chunk", chunk_size=chunk)
    assert out[0].shape == (B, T, H, N, P) and out[1].shape == (B, H, N, P)
    assert _rel(out[0], ref[0]) < tol and _rel(out[1], ref[1]) < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_dense_recurrence_gradcheck(dtype):
    B, T, H, N, P = 1, 11, 2, 3, 2
    A = _rand(B, T, H, N, N, dtype=dtype, scale=0.5, seed=4).requires_grad_()
    b = _rand(B, T, H, N, P, dtype=dtype, seed=5).requires_grad_()
    h0 = _rand(B, H, N, P, dtype=dtype, seed=6).requires_grad_()
    fn = lambda A, b, h0: linear_recurrence_dense(A, b, h0, impl="chunk", chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (A, b, h0))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_dense_scan_grads_match_reference(dtype, tol):
    B, T, H, N, P = 2, 37, 2, 6, 5
    inputs = [
        _rand(B, T, H, N, dtype=dtype, seed=7),
        _rand(B, T, H, N, dtype=dtype, seed=8),
        _rand(B, T, H, P, dtype=dtype, seed=9),
        _rand(B, T, H, N, N, dtype=dtype, scale=0.4, seed=10),
        _rand(B, H, N, P, dtype=dtype, seed=11),
    ]
    w = _rand(B, T, H, P, dtype=dtype, seed=12)
    grads = {}
    for impl in ("recurrent", "chunk"):
        xs = [x.clone().requires_grad_() for x in inputs]
        o, hT = dense_scan(*xs[:4], initial_state=xs[4], impl=impl, chunk_size=8)
        ((o * w).sum() + hT.square().sum()).backward()
        grads[impl] = (o.detach(), hT.detach(), *[x.grad for x in xs])
    for ref, out in zip(grads["recurrent"], grads["chunk"]):
        assert _rel(out, ref) < tol


def test_dense_half_precision_is_computed_in_fp32():
    B, T, H, N, P = 2, 20, 2, 4, 3
    A = _rand(B, T, H, N, N, dtype=torch.float32, scale=0.4)
    q, k = _rand(B, T, H, N, dtype=torch.float32, seed=1), _rand(B, T, H, N, dtype=torch.float32, seed=2)
    v = _rand(B, T, H, P, dtype=torch.float32, seed=3)
    ref, _ = dense_scan(q, k, v, A, impl="recurrent")
    out, _ = dense_scan(q.bfloat16(), k.bfloat16(), v.bfloat16(), A.bfloat16(), chunk_size=8)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05


def test_dense_bad_shapes_raise():
    with pytest.raises(ValueError, match="A \\[B, T, H, N, N\\]"):
        linear_recurrence_dense(torch.zeros(1, 2, 1, 3, 4), torch.zeros(1, 2, 1, 3, 2))
    with pytest.raises(ValueError, match="unknown impl"):
        linear_recurrence_dense(torch.zeros(1, 2, 1, 3, 3), torch.zeros(1, 2, 1, 3, 2), impl="nope")
    with pytest.raises(ValueError, match="initial_state"):
        dense_scan(
            *(torch.zeros(1, 2, 1, 3),) * 3, torch.zeros(1, 2, 1, 3, 3), initial_state=torch.zeros(1, 1, 2, 3)
        )


# -- PD scan ----------------------------------------------------------------------------------


def test_pd_compose_and_apply_match_dense():
    N, P = 7, 3
    g = torch.Generator().manual_seed(0)
    i1, i2 = torch.randint(0, N, (2, 5, N), generator=g)
    d1, d2 = _rand(2, 5, N, dtype=torch.complex128).unbind(0)
    x = _rand(5, N, P, dtype=torch.complex128, seed=3)
    A1, A2 = pd_dense(i1, d1), pd_dense(i2, d2)
    i12, d12 = pd_compose((i2, d2), (i1, d1))
    assert torch.allclose(pd_dense(i12, d12), A2 @ A1)
    assert torch.allclose(pd_apply((i1, d1), x), A1 @ x)
    assert torch.allclose(pd_apply((i1, d1), x, adjoint=True), A1.mH @ x)


PD_DTYPES = [
    (torch.float64, 1e-12),
    (torch.complex128, 1e-12),
    (torch.complex64, 1e-5),
    (torch.float32, 1e-5),
]


@pytest.mark.parametrize("dtype,tol", PD_DTYPES)
@pytest.mark.parametrize("T,chunk", [(1, 4), (9, 4), (40, 16), (64, 64)])
def test_pd_scan_matches_recurrent(dtype, tol, T, chunk):
    B, H, N, P = 2, 3, 6, 4
    idx = torch.randint(0, N, (B, T, H, N), generator=torch.Generator().manual_seed(T))
    D = _rand(B, T, H, N, dtype=dtype, scale=0.6, seed=1)
    b = _rand(B, T, H, N, P, dtype=dtype, seed=2)
    h0 = _rand(B, H, N, P, dtype=dtype, seed=3)
    ref = pd_recurrence(idx, D, b, h0, impl="recurrent")
    out = pd_recurrence(idx, D, b, h0, impl="scan", chunk_size=chunk)
    assert _rel(out[0], ref[0]) < tol and _rel(out[1], ref[1]) < tol


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-10), (torch.complex128, 1e-10), (torch.complex64, 1e-4)]
)
def test_pd_scan_grads_match_reference(dtype, tol):
    """Gradients of q, k, v, D, h0 and the straight-through P_ste against autograd of the dense loop."""
    B, T, H, N, P = 2, 29, 2, 5, 3
    real = torch.float64 if dtype != torch.complex64 else torch.float32
    idx = torch.randint(0, N, (B, T, H, N), generator=torch.Generator().manual_seed(0))
    inputs = [
        _rand(B, T, H, N, dtype=dtype, seed=1),  # q (complex readout)
        _rand(B, T, H, N, dtype=real, seed=2),  # k
        _rand(B, T, H, P, dtype=real, seed=3),  # v
        _rand(B, T, H, N, dtype=dtype, scale=0.6, seed=4),  # D
        _rand(B, H, N, P, dtype=dtype, seed=5),  # h0
        _rand(B, T, H, N, N, dtype=real, seed=6),  # P_ste
    ]
    w = _rand(B, T, H, P, dtype=real, seed=7)
    grads = {}
    for impl in ("recurrent", "scan"):
        xs = [x.clone().requires_grad_() for x in inputs]
        q, k, v, D, h0, Ps = xs
        o, hT = perm_diag_scan(q, k, v, idx, D, initial_state=h0, impl=impl, chunk_size=8, P_ste=Ps)
        ((o * w).sum() + hT.abs().square().sum()).backward()
        grads[impl] = (o.detach(), hT.detach(), *[x.grad for x in xs])
    for ref, out in zip(grads["recurrent"], grads["scan"]):
        assert _rel(out, ref) < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_pd_step_matches_scan_value_and_straight_through_grad(dtype):
    """``pd_step`` looped over time is the scan: same states, same gradients (P_ste included)."""
    B, T, H, N, P = 2, 7, 2, 4, 3
    real = torch.float64
    idx = torch.randint(0, N, (B, T, H, N), generator=torch.Generator().manual_seed(2))
    inputs = [
        _rand(B, T, H, N, dtype=dtype, scale=0.6, seed=1),  # D
        _rand(B, T, H, N, P, dtype=real, seed=2),  # b
        _rand(B, T, H, N, N, dtype=real, seed=3),  # P_ste
    ]
    w = _rand(B, T, H, N, P, dtype=dtype, seed=4)
    grads = []
    for use_step in (False, True):
        D, b, Ps = [x.clone().requires_grad_() for x in inputs]
        if use_step:
            h, hs = torch.zeros(B, H, N, P, dtype=dtype), []
            for t in range(T):
                h = pd_step(idx[:, t], D[:, t], h, Ps[:, t]) + b[:, t]
                hs.append(h)
            h_all = torch.stack(hs, 1)
        else:
            h_all, _ = pd_recurrence(idx, D, b, impl="scan", chunk_size=4, P_ste=Ps)
        (h_all * w.conj()).real.sum().backward()
        grads.append((h_all.detach(), D.grad, b.grad, Ps.grad))
    for ref, out in zip(*grads):
        assert _rel(out, ref) < 1e-10


def test_pd_gradcheck_real():
    B, T, H, N, P = 1, 9, 1, 4, 2
    idx = torch.randint(0, N, (B, T, H, N), generator=torch.Generator().manual_seed(1))
    D = _rand(B, T, H, N, scale=0.7, seed=1).requires_grad_()
    b = _rand(B, T, H, N, P, seed=2).requires_grad_()
    h0 = _rand(B, H, N, P, seed=3).requires_grad_()
    # (P_ste is a straight-through input: its numerical gradient is zero by design; its analytic
    # gradient is checked against the dense reference above.)
    fn = lambda D, b, h0: pd_recurrence(idx, D, b, h0, impl="scan", chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (D, b, h0))


def test_pd_bad_inputs_raise():
    z = torch.zeros(1, 2, 1, 3)
    with pytest.raises(ValueError, match="int64"):
        perm_diag_scan(z, z, z, z, z)
    with pytest.raises(ValueError, match="idx, D"):
        perm_diag_scan(z, z, z, torch.zeros(1, 2, 1, 4, dtype=torch.long), z)


# -- monomial / monarch factors ---------------------------------------------------------------


def _perm_dense(idx: torch.Tensor) -> torch.Tensor:
    return pd_dense(idx, torch.ones(idx.shape, dtype=torch.float64))


def test_stride_permutation_is_the_reshape_transpose():
    r, b = 3, 4
    idx = stride_permutation(r, b)
    x = torch.arange(r * b, dtype=torch.float64)[:, None]
    y = permute_rows(x, idx)
    assert torch.equal(y[:, 0], x[:, 0].reshape(r, b).T.reshape(-1))
    assert torch.equal(inverse_permutation(idx)[idx], torch.arange(r * b))


def test_gs_monomial_equals_dense_product():
    r, b = 4, 4
    g = torch.Generator().manual_seed(0)
    perm_L = torch.stack([torch.randperm(b, generator=g) for _ in range(2 * r)]).reshape(2, r, b)
    perm_R = torch.stack([torch.randperm(b, generator=g) for _ in range(2 * r)]).reshape(2, r, b)
    dL, dR = _rand(2, r, b, seed=1), _rand(2, r, b, seed=2)
    shuffle = stride_permutation(r, b)
    idx, D = gs_monomial(perm_L, dL, shuffle, perm_R, dR)
    L = pd_dense(*block_monomial(perm_L, dL))
    R = pd_dense(*block_monomial(perm_R, dR))
    assert torch.allclose(pd_dense(idx, D), L @ _perm_dense(shuffle) @ R)
    assert torch.equal(idx.sort(-1).values, torch.arange(r * b).expand(2, -1))  # a true permutation


def test_monarch_apply_and_dense_match_explicit_product():
    r, b, P = 4, 3, 5
    L, R = _rand(2, r, b, b, seed=1), _rand(2, r, b, b, seed=2)
    perm = stride_permutation(r, b)
    Pm = _perm_dense(perm)
    M = Pm.T @ block_diag_dense(L) @ Pm @ block_diag_dense(R)
    x = _rand(2, r * b, P, seed=3)
    assert torch.allclose(monarch_dense(L, R, perm), M)
    assert torch.allclose(monarch_apply(L, R, perm, x), M @ x)
    assert torch.allclose(block_diag_apply(L, x), block_diag_dense(L) @ x)


# -- candidate-level properties the kernels rely on -------------------------------------------


def _build(name: str, **hp):
    from harness import get_candidate

    torch.manual_seed(0)
    return get_candidate(name).build(32, **hp).double()


def _x(T: int = 12, scale: float = 3.0) -> torch.Tensor:
    return _rand(2, T, 32, scale=scale, seed=21)


@pytest.mark.parametrize("name", ["dense", "monarch", "dplr", "osc-dplr", "displacement-rank"])
def test_materialised_transitions_are_contractions(name):
    """The stability constructions: l1 operator norm <= 1 (dense), ||A||_inf < 1 (displacement-rank),
    ||A||_2 < 1 (monarch, dplr, osc-dplr), for inputs well outside the initial range."""
    A = _build(name).transitions(_x())
    if name == "dense":
        norm = A.abs().sum(-2).amax(-1)  # max column l1
        assert (norm <= 1 + 1e-12).all()
    elif name == "displacement-rank":
        assert (A.abs().sum(-1).amax(-1) < 1).all()
    else:
        assert (torch.linalg.matrix_norm(A, ord=2) < 1).all()


@pytest.mark.parametrize("osc", [False, True])
def test_dplr_woodbury_equals_explicit_cayley(osc):
    import torch.nn.functional as F

    from harness.candidates.dense import linear

    m = _build("osc-dplr" if osc else "dplr", rank=2)
    x = _x(T=3)
    A = m.transitions(x)
    H, N = m.n_heads, m.d_state
    hm = lambda t: t.unflatten(-1, (H, -1)).transpose(1, 2)  # noqa: E731  [B, H, T, .]
    a = (F.softplus(linear(x, m.dt_proj)) / 2).transpose(1, 2)[..., None, None]
    if osc:
        w, z = F.softplus(hm(linear(x, m.omega_proj))), torch.sigmoid(hm(linear(x, m.zeta_proj)))
        blocks = torch.stack(
            [
                torch.stack([-z * w, -w * torch.sqrt(1 - z * z)], -1),
                torch.stack([w * torch.sqrt(1 - z * z), -z * w], -1),
            ],
            -2,
        )  # [B, H, T, N/2, 2, 2]
        Lam = block_diag_dense(blocks)
    else:
        Lam = torch.diag_embed(-F.softplus(hm(linear(x, m.decay_proj))))
    Z = hm(linear(x, m.z_proj)).unflatten(-1, (N, -1)) / N**0.5
    G = Lam + Z @ m.J.double() @ Z.mT
    eye = torch.eye(N, dtype=torch.float64)
    assert torch.allclose(A, torch.linalg.solve(eye - a * G, eye + a * G), atol=1e-12)
    assert (torch.linalg.eigvalsh(G + G.mT) < 0).all()  # dissipative generator


def test_gs_monomial_hard_permutation_is_max_weight_assignment():
    import itertools

    m = _build("gs-monomial")
    x = _x(T=2)
    perm, _, soft = m.factors(x)
    H, r, b = m.n_heads, m.n_blocks, m.block_size
    logits = torch.nn.functional.linear(x, m.perm_proj.weight, m.perm_proj.bias).unflatten(
        -1, (2, H, r, b, b)
    )
    lg = logits[1, 0, 1, 2, 3]
    best = max(itertools.permutations(range(b)), key=lambda p: sum(lg[p[c], c] for c in range(b)))
    assert tuple(perm[1, 0, 1, 2, 3].tolist()) == best
    assert torch.allclose(soft.sum(-3), torch.ones((), dtype=soft.dtype), atol=1e-12)  # columns sum to 1


@pytest.mark.parametrize("name,param", [("gs-monomial", "perm_proj"), ("pd-ssm", "P_dict")])
def test_straight_through_gradient_reaches_permutation_logits(name, param):
    m = _build(name).float()
    m(_x().float()).square().mean().backward()
    g = getattr(m, param).weight.grad if param.endswith("proj") else getattr(m, param).grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_sinkhorn_matches_log_space_reference_and_its_gradient():
    from harness.candidates.gs_monomial import sinkhorn, sinkhorn_reference

    logits = _rand(3, 2, 4, 4, 5, scale=2.0, seed=30).requires_grad_()
    w = _rand(3, 2, 4, 4, 5, seed=31)
    outs = []
    for fn in (sinkhorn, sinkhorn_reference):
        logits.grad = None
        y = fn(logits, 5, row_dim=-3, col_dim=-2)
        (y * w).sum().backward()
        outs.append((y.detach(), logits.grad.clone()))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-12)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-10)
    assert torch.allclose(outs[0][0].sum(-3), torch.ones((), dtype=torch.float64), atol=1e-12)
