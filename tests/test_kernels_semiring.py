"""kernels/semiring.py: chunked log-semiring scan against its loop and an explicit [T, T] softmax,
the tropical limit against a running max, and long-sequence stability forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.kernels import semiring
from harness.kernels.semiring import empty_state, log_semiring_scan, max_plus_scan, tropical_scan

B, H, N, P = 2, 3, 4, 5


def make(t, dtype=torch.float64, key_scale=1.0, decay_scale=1.0, seed=0, b=B):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(b, t, H, N), key_scale * r(b, t, H, N), r(b, t, H, P)
    log_a = decay_scale * F.logsigmoid(r(b, t, H, N) + 1.0)
    return tuple(x.to(dtype) for x in (q, k, v, log_a))


def softmax_reference(q, k, v, log_a):
    """Explicit [T, T] softmax per (b, h, n) over scores k_s + sum_{r=s+1..t} log_a_r."""
    T = k.shape[1]
    cum = log_a.cumsum(1)  # [B, T, H, N]
    logits = k[:, None] + cum[:, :, None] - cum[:, None]  # [B, t, s, H, N]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None, None]
    logits = logits.masked_fill(~causal, float("-inf"))
    w = torch.softmax(logits, dim=2)
    h = torch.einsum("btshn,bshp->bthnp", w, v)
    o = torch.einsum("bthn,bthnp->bthp", q, h)
    return o, (torch.logsumexp(logits[:, -1], dim=1), h[:, -1])


@pytest.mark.parametrize("t,chunk", [(1, 16), (7, 16), (16, 16), (37, 8), (50, 16), (40, 64)])
@pytest.mark.parametrize("pairwise", [False, True])
def test_chunk_equals_recurrent_float64(t, chunk, pairwise):
    q, k, v, log_a = make(t, key_scale=3.0)
    ref, (l_ref, h_ref) = log_semiring_scan(q, k, v, log_a, impl="recurrent")
    o, (l, h) = semiring._log_semiring_chunk(q, k, v, log_a, None, chunk, pairwise=pairwise)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(l, l_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)


def test_chunk_with_initial_state_equals_recurrent_and_splits():
    q, k, v, log_a = make(45)
    s0 = (torch.randn(B, H, N, dtype=torch.float64), torch.randn(B, H, N, P, dtype=torch.float64))
    ref, (l_ref, h_ref) = log_semiring_scan(q, k, v, log_a, s0, impl="recurrent")
    o, (l, h) = log_semiring_scan(q, k, v, log_a, s0, impl="chunk", chunk_size=8)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((l, h), (l_ref, h_ref), rtol=1e-10, atol=1e-12)
    # carrying the state across two calls is the same as one call
    o1, s1 = log_semiring_scan(q[:, :20], k[:, :20], v[:, :20], log_a[:, :20], s0, chunk_size=8)
    o2, s2 = log_semiring_scan(q[:, 20:], k[:, 20:], v[:, 20:], log_a[:, 20:], s1, chunk_size=8)
    torch.testing.assert_close(torch.cat([o1, o2], 1), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2, (l_ref, h_ref), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
def test_matches_explicit_softmax_reference(impl):
    q, k, v, log_a = make(33, key_scale=2.0)
    o, (l, h) = log_semiring_scan(q, k, v, log_a, impl=impl, chunk_size=8)
    ref, (l_ref, h_ref) = softmax_reference(q, k, v, log_a)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(l, l_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)


def test_float32_and_half_against_float64():
    q, k, v, log_a = make(70, key_scale=3.0)
    ref, _ = log_semiring_scan(q, k, v, log_a, impl="recurrent")
    for dtype, tol in [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)]:
        o, (l, h) = log_semiring_scan(*(x.to(dtype) for x in (q, k, v, log_a)), impl="chunk", chunk_size=16)
        assert o.dtype == dtype and l.dtype == dtype
        err = (o.double() - ref).norm() / ref.norm()
        assert err < tol, f"{dtype}: rel err {err:.2e}"


def test_fallback_to_pairwise_when_the_chunk_range_is_too_wide():
    """Keys 40x wider than the fast path allows in fp32: the dispatch takes the exact path."""
    q, k, v, log_a = make(48, key_scale=40.0, decay_scale=10.0)
    ref, _ = log_semiring_scan(q, k, v, log_a, impl="recurrent")
    q32, k32, v32, g32 = (x.float() for x in (q, k, v, log_a))
    o, _ = log_semiring_scan(q32, k32, v32, g32, impl="chunk", chunk_size=16)
    assert torch.isfinite(o).all()
    assert ((o.double() - ref).norm() / ref.norm()) < 1e-5
    # forcing the factorised path on this range would not be safe in fp32: that is what the check is for
    wide = (k32 - g32.cumsum(1)).unflatten(1, (3, 16))
    assert (wide.amax(2) - wide.amin(2)).max() > semiring._safe_range(torch.float32)


def test_max_plus_scan_equals_recurrent_and_running_max():
    q, k, v, log_a = make(41)
    o_rec, (m_rec, h_rec) = max_plus_scan(q, k, v, log_a, impl="recurrent")
    o_scan, (m_scan, h_scan) = max_plus_scan(q, k, v, log_a, impl="scan")
    torch.testing.assert_close(o_scan, o_rec)
    torch.testing.assert_close((m_scan, h_scan), (m_rec, h_rec))
    # no decay: the state is the running max of the keys and the value at its argmax
    zero = torch.zeros_like(log_a)
    o, (m, h) = max_plus_scan(q, k, v, zero, impl="scan")
    best, idx = torch.cummax(k, dim=1)
    torch.testing.assert_close(m, best[:, -1])
    v_at = torch.gather(
        v[:, :, :, None, :].expand(-1, -1, -1, N, -1), 1, idx[..., None].expand(-1, -1, -1, -1, P)
    )
    torch.testing.assert_close(o, torch.einsum("bthn,bthnp->bthp", q, v_at))
    s0 = (torch.randn(B, H, N, dtype=torch.float64) + 1, torch.randn(B, H, N, P, dtype=torch.float64))
    torch.testing.assert_close(
        max_plus_scan(q, k, v, log_a, s0, impl="scan"), max_plus_scan(q, k, v, log_a, s0, impl="recurrent")
    )


def _min_margin(k, log_a):
    """Smallest gap between the winner and the loser of any max in the max-plus recurrence."""
    m = torch.full(k[:, 0].shape, float("-inf"), dtype=k.dtype)
    margin = torch.tensor(float("inf"), dtype=k.dtype)
    for t in range(k.shape[1]):
        carried = m + log_a[:, t]
        if t:
            margin = torch.minimum(margin, (k[:, t] - carried).abs().min())
        m = torch.maximum(carried, k[:, t])
    return margin


@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
def test_tropical_scan_tends_to_max_plus_as_tau_goes_to_zero(decay, impl):
    q, k, v, log_a = make(40, decay_scale=0.2, seed=3)
    if not decay:
        log_a = torch.zeros_like(log_a)
    tau = 1e-6
    assert _min_margin(k, log_a) > 200 * tau  # no near-ties for this seed: the soft max is the max
    o_max, (m_max, h_max) = max_plus_scan(q, k, v, log_a, impl="recurrent")
    o, (m, h) = tropical_scan(q, k, v, log_a, tau, impl=impl, chunk_size=16)
    torch.testing.assert_close(o, o_max, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(h, h_max, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(m, m_max, rtol=0, atol=tau * 40)  # tau * log(T) above the max at most
    # and at tau = 1 it is the log-semiring scan
    torch.testing.assert_close(tropical_scan(q, k, v, log_a, 1.0)[0], log_semiring_scan(q, k, v, log_a)[0])


def _assert_finite_fwd_bwd(fn, inputs):
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    o, (l, h) = fn(*leaves)
    assert torch.isfinite(o).all() and torch.isfinite(l).all() and torch.isfinite(h).all()
    (o.square().mean() + h.square().mean()).backward()
    for name, x in zip("qkva", leaves):
        assert torch.isfinite(x.grad).all(), f"non-finite gradient for {name}"
    return o


LONG = 16384


@pytest.mark.parametrize("key_scale,decay_scale", [(1.0, 0.05), (30.0, 20.0)])
def test_long_sequence_stable_forward_and_backward(key_scale, decay_scale):
    """T = 16384 in fp32: bounded inputs (fast path) and wild ones (exact pairwise path)."""
    q, k, v, log_a = make(LONG, torch.float32, key_scale, decay_scale, seed=7, b=1)
    o = _assert_finite_fwd_bwd(
        lambda *a: log_semiring_scan(*a, impl="chunk", chunk_size=16), (q, k, v, log_a)
    )
    # outputs are convex mixes of values read by q: bounded by sum |q| * max |v|
    assert (o.abs() <= q.abs().sum(-1, keepdim=True) * v.abs().max() + 1e-3).all()


def test_long_sequence_tropical_stable_at_low_temperature():
    q, k, v, log_a = make(LONG, torch.float32, 1.0, 0.25, seed=8, b=1)
    k = torch.tanh(k)  # the candidate's caps: scores in [-1, 1], decay rate <= 0.25
    log_a = log_a.clamp(min=-0.25)
    _assert_finite_fwd_bwd(
        lambda *a: tropical_scan(*a, tau=0.1, impl="chunk", chunk_size=16), (q, k, v, log_a)
    )
    _assert_finite_fwd_bwd(
        lambda *a: tropical_scan(*a, tau=0.01, impl="chunk", chunk_size=16), (q, k, v, log_a)
    )
    # at the caps (the regression below, over T = 16384): scores +-1 and every decay rate 0.25
    k = torch.where((torch.arange(LONG) % 16 == 15)[None, :, None, None] | (k > 0.9), 1.0, -1.0)
    log_a = torch.full_like(log_a, -0.25)
    _assert_finite_fwd_bwd(
        lambda *a: tropical_scan(*a, tau=0.1, impl="chunk", chunk_size=16), (q, k, v, log_a)
    )


def test_empty_state_and_extreme_decay_do_not_make_nan_gradients():
    q, k, v, log_a = make(20, torch.float32)
    log_a = log_a.clone()
    log_a[:, 5] = -1e4  # forget everything at step 5
    l0, h0 = empty_state(B, H, N, P, dtype=torch.float32)
    for impl in ("chunk", "recurrent"):
        fn = lambda *a, impl=impl: log_semiring_scan(*a, (l0, h0), impl=impl, chunk_size=8)  # noqa: E731
        _assert_finite_fwd_bwd(fn, (q, k, v, log_a))


def test_bad_shapes_and_impl():
    q, k, v, log_a = make(5)
    with pytest.raises(ValueError, match=r"\[B, T, H, N\]"):
        log_semiring_scan(q[..., :2], k, v, log_a)
    with pytest.raises(ValueError, match="initial_state"):
        log_semiring_scan(q, k, v, log_a, (torch.zeros(B, H), torch.zeros(B, H, N, P)))
    with pytest.raises(ValueError, match="unknown impl"):
        log_semiring_scan(q, k, v, log_a, impl="scan")
    with pytest.raises(ValueError, match="tau"):
        tropical_scan(q, k, v, log_a, tau=0.0)


@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
def test_tropical_gradients_finite_at_tau_end_with_inputs_at_the_caps(impl):
    """Regression: the tropical candidate diverged at the end of its tau annealing (tau -> 0.1).

    Scores at the cap (+-1 -> +-10 at tau = 0.1) and every decay at the bound (0.25 -> 2.5 a step)
    put a chunk's range at ~57, still on the fp32 fast path, where the first positions' normaliser
    is ~e^-57; dividing by it made autograd form e^114 (inf, then nan) in the backward.
    """
    t, tau = 40, 0.1
    k = torch.full((B, t, H, N), -1.0, dtype=torch.float64)
    k[:, 15::16] = 1.0  # the max at the end of each chunk, after a run of equal minima
    log_a = torch.full((B, t, H, N), -0.25, dtype=torch.float64)
    q, _, v, _ = make(t, seed=5)
    x = (k[:, :16] - log_a[:, :16].cumsum(1)) / tau  # the first chunk's scores relative to its history
    spread = (x.amax(1) - x.amin(1)).max()
    assert 50 < spread <= semiring._safe_range(torch.float32)  # on the fast path, near its edge

    def run(dtype, impl):
        leaves = [a.to(dtype).requires_grad_(True) for a in (q, k, v, log_a)]
        o, (m, h) = tropical_scan(*leaves, tau=tau, impl=impl, chunk_size=16)
        (o.square().mean() + h.square().mean()).backward()
        return [o, m, h] + [a.grad for a in leaves]

    got = run(torch.float32, impl)
    for name, a in zip(["o", "m", "h", "dq", "dk", "dv", "dlog_a"], got):
        assert torch.isfinite(a).all(), f"non-finite {name}"
    ref = run(torch.float64, "recurrent")
    for name, a, r in zip(["o", "m", "h", "dq", "dk", "dv", "dlog_a"], got, ref):
        assert (a.double() - r).norm() <= 1e-4 * r.norm() + 1e-6, name
