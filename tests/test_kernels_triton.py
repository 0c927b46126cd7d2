"""Triton kernels against their torch references, under ``TRITON_INTERPRET=1`` on CPU (set by conftest).

The interpreter is slow, so shapes are small; ragged shapes (not multiples of the blocks) exercise
the edge masks. bf16 is not run here: the interpreter computes through numpy, which has no bfloat16.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness.kernels import fused_gate
from harness.kernels.fused_gate import sigmoid_gate

pytestmark = pytest.mark.skipif(
    not fused_gate.HAS_TRITON
    or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
    reason="needs triton, and CUDA or TRITON_INTERPRET=1",
)

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"

# (leading shape, K, N): one exact multiple of the blocks, ragged ones, a token-sized one (step)
SHAPES = [((2, 16), 32, 32), ((3, 7), 20, 24), ((1, 37), 29, 45), ((5, 1), 64, 70)]
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3)}


def _inputs(lead, k, n, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(DEVICE, dtype)  # noqa: E731
    x, w, o = mk(*lead, k), mk(n, k) / k**0.5, mk(*lead, n)
    b = mk(n) if bias else None
    return x, w, b, o


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lead,k,n", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_sigmoid_gate_forward_matches_reference(lead, k, n, dtype, bias):
    x, w, b, o = _inputs(lead, k, n, dtype, bias)
    y = sigmoid_gate(x, w, b, o, impl="triton")
    # reference in fp32 on the same (rounded) inputs; the kernel accumulates in fp32 too
    ref = sigmoid_gate(x.float(), w.float(), None if b is None else b.float(), o.float(), impl="reference")
    assert y.dtype == dtype and y.shape == o.shape
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.float(), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lead,k,n", SHAPES[1:3])
def test_sigmoid_gate_backward_matches_reference(lead, k, n, dtype):
    x, w, b, o = _inputs(lead, k, n, dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, o)]
    ref_leaves = [t.detach().float().requires_grad_(True) for t in (x, w, b, o)]
    dy = torch.randn(o.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    sigmoid_gate(*leaves, impl="triton").backward(dy)
    sigmoid_gate(*ref_leaves, impl="reference").backward(dy.float())
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-2)
    for name, a, r in zip("xwbo", leaves, ref_leaves):
        assert a.grad is not None and a.grad.dtype == dtype, name
        torch.testing.assert_close(a.grad.float(), r.grad, rtol=rtol, atol=atol * max(1.0, k**0.5), msg=name)


def test_sigmoid_gate_gradcheck_float32_through_function():
    """The custom backward against finite differences of the reference (float64 on the torch side)."""
    x, w, b, o = _inputs((2, 3), 16, 16, torch.float32)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, o)]
    y = sigmoid_gate(*leaves, impl="triton")
    y.square().sum().backward()
    ref = [t.detach().double().requires_grad_(True) for t in (x, w, b, o)]
    sigmoid_gate(*ref, impl="reference").square().sum().backward()
    for a, r in zip(leaves, ref):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-5)


def test_sigmoid_gate_noncontiguous_inputs():
    x, w, b, o = _inputs((4, 6), 24, 20, torch.float32)
    xt = x.transpose(0, 1)  # [6, 4, 24], non-contiguous
    ot = o.transpose(0, 1)
    y = sigmoid_gate(xt, w.t().contiguous().t(), b, ot, impl="triton")
    torch.testing.assert_close(y, sigmoid_gate(xt, w, b, ot, impl="reference"), rtol=1e-5, atol=1e-5)


def test_sigmoid_gate_bad_shapes_and_impl():
    x, w, b, o = _inputs((2, 3), 16, 8, torch.float32)
    with pytest.raises(ValueError, match="K=16"):
        sigmoid_gate(x[..., :-1], w, b, o)
    with pytest.raises(ValueError, match="N=8"):
        sigmoid_gate(x, w, b, o[..., :-1])
    with pytest.raises(ValueError, match="bias"):
        sigmoid_gate(x, w, b[:-1], o)
    with pytest.raises(ValueError, match="unknown impl"):
        sigmoid_gate(x, w, b, o, impl="cuda")
    with pytest.raises(RuntimeError, match="supports"):
        sigmoid_gate(x.double(), w.double(), b.double(), o.double(), impl="triton")


def test_gated_candidate_uses_triton_path_and_matches_reference():
    """The modifier's fused path (forced here; on GPU it is the default) gives the reference output."""
    from harness import get_candidate

    m = get_candidate("linear-attention+gate").build(32)
    x = torch.randn(2, 12, 32)
    m.output_gate.impl = "reference"
    ref = m(x)
    m.output_gate.impl = "triton"
    y = m(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert m.output_gate.gate.weight.grad is not None and torch.isfinite(m.output_gate.gate.weight.grad).all()


# -- PD-SSM scan (kernels/pd_scan_triton.py) and Fourier circulant scan (kernels/fourier_scan_triton.py) --
# Forward and backward against the ``recurrent`` references (dense loops), float32, on fresh random
# inputs; every buffer the kernels write starts as NaN (``_empty`` patched), so an element left
# unwritten shows. Ragged sizes: T not a multiple of the checkpoint chunk, N / F not a power of two
# (padded to the block), P over two value blocks with a partial last one.

from harness.kernels import fourier_scan_triton, pd_scan_triton  # noqa: E402
from harness.kernels.fourier import circulant_scan  # noqa: E402
from harness.kernels.perm_diag_scan import perm_diag_scan  # noqa: E402


@pytest.fixture
def poisoned(monkeypatch):
    nan = lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device)  # noqa: E731
    monkeypatch.setattr(pd_scan_triton, "_empty", nan)
    monkeypatch.setattr(fourier_scan_triton, "_empty", nan)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _fresh(seed):
    g = torch.Generator().manual_seed(seed)
    real = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    cplx = lambda *s: torch.complex(real(*s), real(*s))  # noqa: E731
    return g, real, cplx


def _pd_inputs(kind, B, T, H, N, P, idx_kind, seed):
    """``kind``: "pd-ssm" (the candidate's: complex q, D, h0; real k, v; straight-through P),
    "real" (a real state, as gs-monomial's), "complex" (every operand complex, no h0, no P)."""
    g, real, cplx = _fresh(seed)
    if idx_kind == "perm":  # one level per token
        idx = torch.stack([torch.randperm(N, generator=g) for _ in range(B * T * H)]).view(B, T, H, N)
    elif idx_kind == "collapse":  # every column on one row: N levels
        idx = torch.randint(0, N, (B, T, H, 1), generator=g).expand(B, T, H, N).contiguous()
    else:
        idx = torch.randint(0, N, (B, T, H, N), generator=g)
    idx = idx.to(DEVICE)
    if kind == "pd-ssm":
        xs = [cplx(B, T, H, N), real(B, T, H, N), real(B, T, H, P), 0.6 * cplx(B, T, H, N)]
        return xs + [cplx(B, H, N, P), real(B, T, H, N, N)], idx
    if kind == "real":
        xs = [real(B, T, H, N), real(B, T, H, N), real(B, T, H, P), 0.8 * real(B, T, H, N)]
        return xs + [real(B, H, N, P), real(B, T, H, N, N)], idx
    xs = [cplx(B, T, H, N), cplx(B, T, H, N), cplx(B, T, H, P), 0.6 * cplx(B, T, H, N)]
    return xs + [None, None], idx


def _pd_run(impl, inputs, idx, chunk, block_p, seed):
    leaves = [None if x is None else x.clone().requires_grad_(True) for x in inputs]
    q, k, v, D, h0, Ps = leaves
    if impl == "triton":
        o, hT = pd_scan_triton.pd_scan_triton(q, k, v, idx, D, h0, chunk, Ps, block_p=block_p)
    else:
        o, hT = perm_diag_scan(q, k, v, idx, D, h0, impl=impl, P_ste=Ps)
    g = torch.Generator().manual_seed(seed + 100)
    w_o = torch.randn(o.shape, generator=g).to(DEVICE)
    w_h = torch.randn(hT.shape, generator=g, dtype=hT.dtype).to(DEVICE)
    ((o * w_o).sum() + (hT * w_h.conj()).real.sum()).backward()
    return [o.detach(), hT.detach()] + [None if x is None else x.grad for x in leaves]


PD_CASES = [  # kind, (B, T, H, N, P), chunk, block_p, idx
    ("pd-ssm", (1, 7, 2, 5, 20), 3, 16, "random"),  # T % chunk != 0, N = 5, P over 2 blocks (16 + 4)
    ("pd-ssm", (2, 6, 1, 16, 16), 4, 64, "perm"),
    ("pd-ssm", (1, 5, 1, 6, 3), 8, 64, "collapse"),  # chunk > T, every column onto one row
    ("real", (1, 9, 1, 7, 5), 4, 64, "random"),
    ("complex", (2, 5, 1, 3, 18), 2, 16, "random"),
]


@pytest.mark.parametrize("kind,shape,chunk,block_p,idx_kind", PD_CASES)
def test_pd_scan_triton_matches_recurrent_forward_and_backward(
    poisoned, kind, shape, chunk, block_p, idx_kind
):
    seed = sum(shape) * 7 + len(kind)
    inputs, idx = _pd_inputs(kind, *shape, idx_kind, seed)
    ref = _pd_run("recurrent", inputs, idx, chunk, block_p, seed)
    out = _pd_run("triton", inputs, idx, chunk, block_p, seed)
    names = ["o", "h_T", "dq", "dk", "dv", "dD", "dh0", "dP"]
    for name, r, a in zip(names, ref, out):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert torch.isfinite(a).all(), f"{name}: unwritten (NaN-poisoned) elements"
        assert _rel(a, r) < 2e-5, f"{name}: rel err {_rel(a, r):.2e}"


def test_pd_scan_triton_dispatch_and_no_grad_forward(poisoned):
    inputs, idx = _pd_inputs("pd-ssm", 1, 6, 1, 4, 5, "random", 3)
    q, k, v, D, h0, _ = inputs
    o_ref, h_ref = perm_diag_scan(q, k, v, idx, D, h0, impl="recurrent")
    with torch.no_grad():  # no checkpoints saved
        o, h = perm_diag_scan(q, k, v, idx, D, h0, impl="triton", chunk_size=4)
    assert _rel(o, o_ref) < 2e-5 and _rel(h, h_ref) < 2e-5
    with pytest.raises(RuntimeError, match="float32 / complex64"):
        perm_diag_scan(
            q.to(torch.complex128), k.double(), v.double(), idx, D.to(torch.complex128), impl="triton"
        )
    with pytest.raises(ValueError, match="auto, recurrent, scan, triton"):
        perm_diag_scan(q, k, v, idx, D, impl="cuda")


def _circ_inputs(B, T, H, N, P, nblk, seed):
    g, real, _ = _fresh(seed)
    nb = N // nblk // 2 + 1
    mag = (0.3 + 0.7 * torch.rand(B, T, H, nblk, nb, generator=g)).to(DEVICE)
    phase = 3 * real(B, T, H, nblk, nb)  # deliberately not real on the self-conjugate bins
    return real(B, T, H, N), real(B, T, H, N), real(B, T, H, P), mag, phase, real(B, H, N, P)


CIRC_CASES = [  # (B, T, H, N, P), n_blocks, chunk, block_p, eigenvalues, initial state
    ((1, 7, 2, 12, 20), 2, 3, 16, "pair", True),  # b = 6: F = 8; P over 2 blocks
    ((2, 5, 1, 9, 5), 3, 2, 64, "complex", True),  # b = 3 (odd: one self-conjugate bin), F = 6
    ((1, 6, 1, 16, 8), 1, 8, 64, "complex", False),  # chunk > T, F = 9
]


@pytest.mark.parametrize("shape,nblk,chunk,block_p,lam_kind,with_h0", CIRC_CASES)
def test_fourier_scan_triton_matches_recurrent_forward_and_backward(
    poisoned, shape, nblk, chunk, block_p, lam_kind, with_h0
):
    q, k, v, mag, phase, h0 = _circ_inputs(*shape, nblk, seed=sum(shape) + nblk)
    results = []
    for impl in ("recurrent", "triton"):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, mag, phase, h0)]
        lam = (leaves[3], leaves[4]) if lam_kind == "pair" else torch.polar(leaves[3], leaves[4])
        init = leaves[5] if with_h0 else None
        if impl == "triton":
            o, hT = fourier_scan_triton.circulant_scan_triton(*leaves[:3], lam, init, chunk, block_p=block_p)
        else:
            o, hT = circulant_scan(*leaves[:3], lam, init, impl="recurrent")
        g = torch.Generator().manual_seed(7)
        w_o, w_h = (torch.randn(t.shape, generator=g).to(DEVICE) for t in (o, hT))
        ((o * w_o).sum() + (hT * w_h).sum()).backward()
        grads = [x.grad for x in leaves[: 5 + with_h0]]
        results.append([o.detach(), hT.detach(), *grads])
    names = ["o", "h_T", "dq", "dk", "dv", "dmag", "dphase", "dh0"]
    for name, r, a in zip(names, *results):
        assert a.dtype == r.dtype == torch.float32 and a.shape == r.shape, name
        assert torch.isfinite(a).all(), f"{name}: unwritten (NaN-poisoned) elements"
        assert _rel(a, r) < 2e-5, f"{name}: rel err {_rel(a, r):.2e}"


def test_fourier_scan_triton_half_inputs_and_errors(poisoned):
    q, k, v, mag, phase, _ = _circ_inputs(1, 6, 1, 8, 4, 1, seed=2)
    o_ref, _ = circulant_scan(q, k, v, (mag, phase), impl="recurrent")
    o, h = circulant_scan(q.half(), k.half(), v.half(), (mag, phase), impl="triton", chunk_size=4)
    assert o.dtype == h.dtype == torch.float16 and float((o.float() - o_ref).norm() / o_ref.norm()) < 5e-3
    with pytest.raises(RuntimeError, match="float32"):
        circulant_scan(q.double(), k.double(), v.double(), (mag.double(), phase.double()), impl="triton")
    with pytest.raises(ValueError, match="auto, chunk, recurrent, triton"):
        circulant_scan(q, k, v, (mag, phase), impl="fft")


def test_pd_and_fourier_triton_read_strided_inputs(poisoned):
    """Inputs in a [B, H, T, ...] memory layout seen as [B, T, H, ...] (no copies in the kernels)."""
    g, real, _ = _fresh(4)
    B, T, H, N, P = 2, 5, 3, 4, 6
    mk = lambda *s: real(B, H, T, *s).transpose(1, 2)  # noqa: E731
    q, D = torch.complex(mk(N), mk(N)), 0.5 * torch.complex(mk(N), mk(N))
    k, v = mk(N), mk(P)
    idx = torch.randint(0, N, (B, H, T, N), generator=g).to(DEVICE).transpose(1, 2)
    assert not q.is_contiguous()
    for a, r in zip(
        perm_diag_scan(q, k, v, idx, D, impl="triton"), perm_diag_scan(q, k, v, idx, D, impl="recurrent")
    ):
        assert _rel(a, r) < 2e-5
    lam = (0.3 + 0.7 * torch.rand(B, H, T, 1, 3, generator=g).to(DEVICE).transpose(1, 2), mk(1, 3))
    out = circulant_scan(k, 2 * k, v, lam, impl="triton")
    for a, r in zip(out, circulant_scan(k, 2 * k, v, lam, impl="recurrent")):
        assert _rel(a, r) < 2e-5


def test_auto_never_picks_triton_on_cpu_and_is_bit_identical():
    """CPU tensors (even with the interpreter on) take the torch paths by default, bit for bit."""
    if DEVICE != "cpu":
        pytest.skip("CPU dispatch")
    inputs, idx = _pd_inputs("pd-ssm", 1, 9, 2, 4, 3, "random", 5)
    q, k, v, D, h0, _ = inputs
    assert not pd_scan_triton.use_triton_by_default(q, k, v, idx, D, h0)
    for a, b in zip(perm_diag_scan(q, k, v, idx, D, h0), perm_diag_scan(q, k, v, idx, D, h0, impl="scan")):
        assert torch.equal(a, b)
    q, k, v, mag, phase, h0 = _circ_inputs(1, 9, 2, 8, 3, 1, seed=5)
    assert not fourier_scan_triton.use_triton_by_default(q, k, v, mag, phase, h0)
    auto = circulant_scan(q, k, v, (mag, phase), h0)
    for a, b in zip(auto, circulant_scan(q, k, v, (mag, phase), h0, impl="chunk")):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["pd-ssm", "circulant", "cayley-circulant"])
def test_candidates_take_the_triton_path_where_auto_selects_it(monkeypatch, name):
    """The candidates' CUDA path, forced onto the interpreter: same output and parameter gradients."""
    from harness import get_candidate

    torch.manual_seed(0)
    m = get_candidate(name).build(32).to(DEVICE)
    x = torch.randn(2, 5, 32, device=DEVICE)
    calls = []
    for mod, fn in ((pd_scan_triton, "pd_scan_triton"), (fourier_scan_triton, "circulant_scan_triton")):
        kernel = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda *a, _k=kernel, **kw: calls.append(1) or _k(*a, **kw))
    runs = []
    for forced in (False, True):
        monkeypatch.setattr(pd_scan_triton, "use_triton_by_default", lambda *t, f=forced: f)
        monkeypatch.setattr(fourier_scan_triton, "use_triton_by_default", lambda *t, f=forced: f)
        m.zero_grad()
        y = m(x)
        y.square().sum().backward()
        runs.append((y.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        assert len(calls) == int(forced), "auto must take the kernel exactly when it is selected"
    (y_ref, g_ref), (y, g) = runs
    assert _rel(y, y_ref) < 2e-5
    assert g.keys() == g_ref.keys()
    for n in g_ref:
        assert _rel(g[n], g_ref[n]) < 1e-4, n


def test_gpu_kernels_check_dry_run():
    """scripts/gpu-kernels-check --dry-run: its correctness part and the timing code path, on CPU under
    the interpreter at a tiny shape (what a GPU session runs in full with one command)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu-kernels-check"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, str(script), "--dry-run"], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout and " ok " in run.stdout and "pd       triton" in run.stdout
