"""Kernels of the attention group against their references: feature maps, sliding-window attention,
second-order HLA, the Taylor linear attention, the generalised delta rule and SO-KDA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.kernels import generalized_delta as gd
from harness.kernels.delta_rule import delta_rule
from harness.kernels.feature_maps import (
    circulant_matrix,
    circulant_params,
    circulant_project,
    favor_features,
    orthogonal_gaussian,
    rotary,
    taylor_dim,
    taylor_features,
)
from harness.kernels.hla import hla_second_order
from harness.kernels.sliding_window import empty_state, sliding_window_attention
from harness.kernels.taylor_attn import taylor_linear_attention

B, H = 2, 3
TIGHT = dict(rtol=1e-10, atol=1e-12)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# -- feature maps ---------------------------------------------------------------------------------------


def test_circulant_projection_by_fft_equals_dense_matrix():
    gen = torch.Generator().manual_seed(0)
    for m, d in [(32, 16), (20, 8), (7, 7)]:
        c, s = circulant_params(m, d, gen)
        x = randn(4, 5, d, seed=m)
        dense = circulant_matrix(c, s, m)
        assert dense.shape == (m, d)
        torch.testing.assert_close(circulant_project(x, c, s, m), x @ dense.t(), **TIGHT)
        # each block is circulant: row i is row 0 rolled by i (before the signs)
        block = dense[:d] * s
        torch.testing.assert_close(block[1], torch.roll(block[0], 1))


def test_orthogonal_gaussian_rows_are_orthogonal_within_blocks():
    w = orthogonal_gaussian(40, 16, torch.Generator().manual_seed(1))
    assert w.shape == (40, 16)
    for start in (0, 16):
        blk = w[start : start + 16]
        gram = blk @ blk.t()
        torch.testing.assert_close(
            gram - torch.diag(torch.diagonal(gram)), torch.zeros(16, 16, dtype=w.dtype), atol=1e-10, rtol=0
        )


@pytest.mark.parametrize("kind", ["dense", "circulant"])
def test_favor_features_estimate_the_softmax_kernel(kind):
    """Positive features; exp(q.k / sqrt(d)) recovered up to the stabilisers' constant, for many features."""
    d, m = 8, 4096
    gen = torch.Generator().manual_seed(2)
    if kind == "dense":
        w = orthogonal_gaussian(m, d, gen)
        project = lambda x: x @ w.t()  # noqa: E731
        bound = w.square().sum(-1).max() / 2
    else:
        c, s = circulant_params(m, d, gen)
        project = lambda x: circulant_project(x, c, s, m)  # noqa: E731
        bound = c.square().sum(-1).max() / 2
    q, k = 0.5 * randn(6, d, seed=3), 0.5 * randn(6, d, seed=4)
    qs, ks = q / d**0.25, k / d**0.25
    pq, pk = favor_features(project(qs), qs, None), favor_features(project(ks), ks, bound)
    assert (pq > 0).all() and (pk > 0).all() and (pk <= 1 / math.sqrt(m) + 1e-12).all()
    est = pq @ pk.t()
    exact = torch.exp(q @ k.t() / math.sqrt(d))
    ratio = est / exact  # the stabilisers' constants: one per query row
    spread = ratio / ratio.mean(dim=1, keepdim=True)
    assert (spread - 1).abs().max() < 0.12, f"{kind}: kernel estimate off by {(spread - 1).abs().max():.3f}"


def test_favor_key_features_bounded_for_any_input():
    d, m = 16, 32
    w = orthogonal_gaussian(m, d, torch.Generator().manual_seed(5))
    bound = w.square().sum(-1).max() / 2
    for scale in (0.1, 10.0, 1e3):
        ks = scale * randn(50, d, seed=6)
        f = favor_features(ks @ w.t(), ks, bound)
        assert torch.isfinite(f).all() and (f <= 1).all()


def test_taylor_features_inner_product():
    for d in (4, 16):
        q, k = randn(10, d, seed=7), randn(12, d, seed=8)
        pq, pk = taylor_features(q), taylor_features(k)
        assert pq.shape[-1] == taylor_dim(d) == 1 + d + d * (d + 1) // 2
        u = q @ k.t() / math.sqrt(d)
        torch.testing.assert_close(pq @ pk.t(), 1 + u + u.square() / 2, **TIGHT)


def test_rotary_scores_depend_on_relative_position():
    q, k = randn(1, 1, 2, 8, seed=9), randn(1, 1, 2, 8, seed=10)
    s1 = (rotary(q, torch.tensor([5])) * rotary(k, torch.tensor([2]))).sum(-1)
    s2 = (rotary(q, torch.tensor([13])) * rotary(k, torch.tensor([10]))).sum(-1)
    torch.testing.assert_close(s1, s2, **TIGHT)
    torch.testing.assert_close(rotary(q, torch.tensor([0])), q)


# -- sliding-window attention ------------------------------------------------------------------------------


def band_reference(q, k, v, W):
    T = q.shape[1]
    t = torch.arange(T)
    band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - W)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    attn = torch.softmax(scores.masked_fill(~band, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshd->bthd", attn, v)


@pytest.mark.parametrize("T,W", [(1, 4), (3, 4), (16, 4), (37, 8), (40, 16), (5, 16)])
def test_sliding_window_chunk_recurrent_and_band_reference(T, W):
    q, k, v = randn(B, T, H, 6, seed=1), randn(B, T, H, 6, seed=2), randn(B, T, H, 5, seed=3)
    o_c, (kb_c, vb_c, p_c) = sliding_window_attention(q, k, v, W, impl="chunk")
    o_r, (kb_r, vb_r, p_r) = sliding_window_attention(q, k, v, W, impl="recurrent")
    torch.testing.assert_close(o_c, o_r, **TIGHT)
    torch.testing.assert_close(o_c, band_reference(q, k, v, W), **TIGHT)
    torch.testing.assert_close((kb_c, vb_c), (kb_r, vb_r), **TIGHT)
    assert int(p_c) == int(p_r) == T


@pytest.mark.parametrize("T1,T2,W", [(3, 9, 4), (10, 7, 4), (4, 4, 4), (20, 1, 8)])
def test_sliding_window_state_carries_across_calls(T1, T2, W):
    q, k, v = (
        randn(B, T1 + T2, H, 4, seed=4),
        randn(B, T1 + T2, H, 4, seed=5),
        randn(B, T1 + T2, H, 3, seed=6),
    )
    full, _ = sliding_window_attention(q, k, v, W, impl="recurrent")
    for impl in ("chunk", "recurrent"):
        o1, st = sliding_window_attention(q[:, :T1], k[:, :T1], v[:, :T1], W, impl=impl)
        o2, _ = sliding_window_attention(q[:, T1:], k[:, T1:], v[:, T1:], W, st, impl=impl)
        torch.testing.assert_close(torch.cat([o1, o2], 1), full, **TIGHT)


def test_sliding_window_bad_state_and_shapes():
    q = randn(B, 5, H, 4)
    with pytest.raises(ValueError, match="state"):
        sliding_window_attention(q, q, q, 4, empty_state(B, H, 3, 4, 4, dtype=q.dtype))
    with pytest.raises(ValueError, match=r"\[B, T, H, D\]"):
        sliding_window_attention(q, q[..., :3], q, 4)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, q, q, 0)


# -- second-order HLA ---------------------------------------------------------------------------------------


def hla_streaming_paper(q, k, v):
    """The paper's five-summary streaming identity (Theorem 3.1): o_t = q^T (S C - G), no decay."""
    Bq, T, Hq, K = q.shape
    S = q.new_zeros(Bq, Hq, K, K)
    C = q.new_zeros(Bq, Hq, K, v.shape[-1])
    G = torch.zeros_like(C)
    outs = []
    for t in range(T):
        kt, qt, vt = k[:, t], q[:, t], v[:, t]
        G = G + kt[..., None] * torch.einsum("bhk,bhkv->bhv", kt, C)[:, :, None, :]  # uses C_{t-1}
        S = S + kt[..., :, None] * kt[..., None, :]
        C = C + qt[..., None] * vt[:, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, S @ C - G))
    return torch.stack(outs, 1)


def hla_quadratic(q, k, v):
    """sum over i <= j <= t of (q_t . k_i)(k_i . q_j) v_j, by explicit masks."""
    T = q.shape[1]
    qk = torch.einsum("bthd,bihd->bhti", q, k)  # q_t . k_i
    kq = torch.einsum("bihd,bjhd->bhij", k, q)  # k_i . q_j
    t = torch.arange(T)
    w = torch.einsum("bhti,bhij->bhtij", qk, kq)
    mask = (t[:, None, None] >= t[None, None, :]) & (t[None, None, :] >= t[None, :, None])  # t >= j >= i
    w = (w * mask).sum(3)  # [B, H, t, j]
    return torch.einsum("bhtj,bjhv->bthv", w, v)


def test_hla_chunk_recurrent_paper_identity_and_quadratic_form():
    q, k, v = randn(B, 23, H, 4, seed=1), randn(B, 23, H, 4, seed=2), randn(B, 23, H, 5, seed=3)
    o_c, (S_c, P_c) = hla_second_order(q, k, v, impl="chunk", chunk_size=8)
    o_r, (S_r, P_r) = hla_second_order(q, k, v, impl="recurrent")
    torch.testing.assert_close(o_c, o_r, **TIGHT)
    torch.testing.assert_close((S_c, P_c), (S_r, P_r), **TIGHT)
    torch.testing.assert_close(o_c, hla_streaming_paper(q, k, v), **TIGHT)
    torch.testing.assert_close(o_c, hla_quadratic(q, k, v), **TIGHT)
    o1, st = hla_second_order(q[:, :9], k[:, :9], v[:, :9], chunk_size=4)
    o2, _ = hla_second_order(q[:, 9:], k[:, 9:], v[:, 9:], st, chunk_size=4)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_r, **TIGHT)


# -- Taylor linear attention ------------------------------------------------------------------------------


@pytest.mark.parametrize("T,chunk", [(1, 64), (20, 64), (37, 8), (16, 16)])
def test_taylor_linear_attention_chunk_equals_recurrent(T, chunk):
    q, k, v = randn(B, T, H, 4, seed=1), randn(B, T, H, 4, seed=2), randn(B, T, H, 3, seed=3)
    S0 = randn(B, H, taylor_dim(4), 3, seed=4)
    for init in (None, S0):
        o_c, S_c = taylor_linear_attention(q, k, v, init, impl="chunk", chunk_size=chunk)
        o_r, S_r = taylor_linear_attention(q, k, v, init, impl="recurrent")
        torch.testing.assert_close(o_c, o_r, **TIGHT)
        torch.testing.assert_close(S_c, S_r, **TIGHT)
    u = torch.einsum("bthd,bshd->bhts", q, k) / 2.0
    ref = torch.einsum("bhts,bshv->bthv", torch.tril(1 + u + u.square() / 2), v)
    torch.testing.assert_close(taylor_linear_attention(q, k, v, chunk_size=chunk)[0], ref, **TIGHT)
    o, S = taylor_linear_attention(q, k, v, chunk_size=chunk, output_final_state=False)
    assert S is None
    torch.testing.assert_close(o, ref, **TIGHT)


# -- generalised delta rule and SO-KDA -------------------------------------------------------------------


def delta_inputs(T, K=5, V=4, seed=0, decay_scale=0.5, dtype=torch.float64):
    q, k, a, b = (F.normalize(randn(B, T, H, K, seed=seed + i), dim=-1) for i in range(4))
    v = randn(B, T, H, V, seed=seed + 5)
    beta = torch.sigmoid(randn(B, T, H, seed=seed + 6))
    g = -decay_scale * torch.rand(
        B, T, H, K, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64
    )
    return tuple(x.to(dtype) for x in (q, k, v, beta, g, a, b))


@pytest.mark.parametrize("T,chunk", [(1, 16), (16, 16), (37, 8), (29, 64)])
@pytest.mark.parametrize("erase,two_vectors", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("pairwise", [False, True])
def test_generalized_delta_chunk_equals_recurrent(T, chunk, erase, two_vectors, pairwise):
    q, k, v, beta, g, a, b = delta_inputs(T)
    if not two_vectors:
        a = b = None
    S0 = randn(B, H, 5, 4, seed=11)
    ref, S_ref = gd.generalized_delta_rule(q, k, v, beta, g, a, b, erase, S0, impl="recurrent")
    aa, bb = (k if a is None else a), (k if b is None else b)
    o, S = gd._chunk(q, k, v, beta, g, aa, bb, erase, S0, chunk, pairwise=pairwise)
    torch.testing.assert_close(o, ref, **TIGHT)
    torch.testing.assert_close(S, S_ref, **TIGHT)


def test_generalized_delta_with_scalar_decay_matches_the_delta_rule_kernel():
    """a = b = k and a decay shared by the channels is (Gated) DeltaNet: kernels/delta_rule.py."""
    q, k, v, beta, g, _, _ = delta_inputs(30)
    g_head = g[..., 0]
    ours, S = gd.generalized_delta_rule(q, k, v, beta, g_head[..., None].expand_as(g), chunk_size=8)
    theirs, S_t = delta_rule(q, k, v, beta, torch.exp(g_head), impl="recurrent")
    torch.testing.assert_close(ours, theirs, **TIGHT)
    torch.testing.assert_close(S, S_t, **TIGHT)


def test_generalized_delta_float32_and_wide_decay_span():
    q, k, v, beta, g, a, b = delta_inputs(
        48, decay_scale=6.0
    )  # span up to 6 * 16 = 96 > 60: pairwise in fp32
    ref, _ = gd.generalized_delta_rule(q, k, v, beta, g, a, b, impl="recurrent")
    for dtype, tol in [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)]:
        o, _ = gd.generalized_delta_rule(*(x.to(dtype) for x in (q, k, v, beta, g, a, b)), chunk_size=16)
        assert o.dtype == dtype and torch.isfinite(o).all()
        assert (o.double() - ref).norm() / ref.norm() < tol


@pytest.mark.parametrize("T,chunk", [(1, 4), (16, 16), (37, 8)])
def test_scalar_decay_linear_attention_chunk_equals_recurrent(T, chunk):
    q, k, v, _, g, _, _ = delta_inputs(T)
    S0 = randn(B, H, 5, 4, seed=3)
    ref, S_ref = gd.scalar_decay_linear_attention(q, k, v, g[..., 0], S0, impl="recurrent")
    o, S = gd.scalar_decay_linear_attention(q, k, v, g[..., 0], S0, impl="chunk", chunk_size=chunk)
    torch.testing.assert_close((o, S), (ref, S_ref), **TIGHT)


def so_kda_seed_equations(q, k, v, beta, g, gamma):
    """Proposal 059 written out per step: M, k~, S, with no shared code."""
    Bq, T, Hq, K = q.shape
    M = q.new_zeros(Bq, Hq, K, K)
    S = q.new_zeros(Bq, Hq, K, v.shape[-1])
    outs = []
    for t in range(T):
        kt = k[:, t]
        M = gamma * M + kt[..., :, None] * kt[..., None, :]
        mk = (M @ kt[..., None])[..., 0]
        kt_tilde = mk / mk.norm(dim=-1, keepdim=True)
        bt = beta[:, t, :, None, None]
        transition = torch.eye(K, dtype=q.dtype) - bt * kt_tilde[..., :, None] * kt[..., None, :]
        S = transition @ (torch.exp(g[:, t])[..., None] * S) + bt * kt[..., :, None] * v[:, t, :, None, :]
        outs.append((S.transpose(-1, -2) @ q[:, t, ..., None])[..., 0])
    return torch.stack(outs, 1), (M, S)


@pytest.mark.parametrize("T,chunk,gamma", [(1, 16, 0.99), (16, 16, 0.9), (37, 8, 0.99), (30, 16, 1.0)])
def test_so_kda_chunk_recurrent_and_seed_equations(T, chunk, gamma):
    q, k, v, beta, g, _, _ = delta_inputs(T)
    ref, (M_ref, S_ref) = so_kda_seed_equations(q, k, v, beta, g, gamma)
    for impl in ("recurrent", "chunk"):
        o, (M, S) = gd.so_kda(q, k, v, beta, g, gamma, impl=impl, chunk_size=chunk)
        torch.testing.assert_close(o, ref, **TIGHT)
        torch.testing.assert_close((M, S), (M_ref, S_ref), **TIGHT)
    if T > 1:  # carried state
        h = T // 2
        o1, st = gd.so_kda(*[x[:, :h] for x in (q, k, v, beta, g)], gamma, chunk_size=chunk)
        o2, _ = gd.so_kda(*[x[:, h:] for x in (q, k, v, beta, g)], gamma, st, chunk_size=chunk)
        torch.testing.assert_close(torch.cat([o1, o2], 1), ref, **TIGHT)


def test_delta_bad_shapes():
    q, k, v, beta, g, a, b = delta_inputs(5)
    with pytest.raises(ValueError, match="beta"):
        gd.generalized_delta_rule(q, k, v, beta[..., :1], g)
    with pytest.raises(ValueError, match="a must be"):
        gd.generalized_delta_rule(q, k, v, beta, g, a=a[..., :2])
    with pytest.raises(ValueError, match="unknown impl"):
        gd.generalized_delta_rule(q, k, v, beta, g, impl="wy")
    with pytest.raises(ValueError, match="metric_decay"):
        gd.so_kda(q, k, v, beta, g, 0.0)
