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
