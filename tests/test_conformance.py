"""Conformance: every registered candidate (and every group member, modifiers included) is checked
here automatically — registering a candidate is what puts it under test."""

from __future__ import annotations

import pytest
import torch

from harness import get_candidate
from harness.mixer import count_params, measure_state
from harness.registry import candidate_names, groups

B, T, D = 2, 40, 32


def all_names() -> list[str]:
    names = set(candidate_names())
    for members in groups().values():
        names.update(members)
    return sorted(names)


def build(name: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    spec = get_candidate(name)
    overrides = {}
    if "chunk_size" in spec.hparam_defaults:
        overrides["chunk_size"] = 16  # several chunks at T=40, and a ragged last one
    torch.manual_seed(seed)
    return spec.build(D, **overrides).to(dtype)


def inputs(dtype=torch.float64, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, t, D, generator=g, dtype=torch.float64).to(dtype)


NAMES = all_names()


@pytest.fixture(params=NAMES)
def name(request):
    spec = get_candidate(request.param)
    if spec.needs_cuda and not torch.cuda.is_available():
        pytest.skip(f"{request.param} needs CUDA")
    return request.param


def test_shapes_fp32(name):
    m = build(name, torch.float32)
    y = m(inputs(torch.float32))
    assert y.shape == (B, T, D) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_parallel_equals_recurrent_float64(name):
    m = build(name).eval()
    x = inputs()
    with torch.no_grad():
        par = m(x)
        rec = m.forward_recurrent(x)
    scale = rec.abs().max().clamp_min(1e-6)
    err = (par - rec).abs().max() / scale
    assert err < 1e-7, f"{name}: parallel vs recurrent max rel err {err:.3e}"


def test_causal(name):
    m = build(name).eval()
    x = inputs()
    t0 = 23
    x2 = x.clone()
    x2[:, t0:] = torch.randn_like(x2[:, t0:]) * 3
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert torch.allclose(y[:, :t0], y2[:, :t0], atol=1e-10, rtol=0), f"{name}: output before t={t0} changed"
    assert not torch.allclose(y[:, t0:], y2[:, t0:]), f"{name}: output ignores the input"


def test_low_precision(name):
    spec = get_candidate(name)
    for dtype in (torch.bfloat16, torch.float16):
        if dtype not in spec.cls.supported_dtypes:
            continue
        m = build(name, torch.float32)
        ref = m(inputs(torch.float32))
        y = m.to(dtype)(inputs(dtype))
        assert y.dtype == dtype and y.shape == (B, T, D)
        assert torch.isfinite(y).all(), f"{name}: non-finite output in {dtype}"
        rel = (y.float() - ref).norm() / ref.norm().clamp_min(1e-6)
        assert rel < 0.1, f"{name}: {dtype} relative error {rel:.3f} against fp32"


def test_deterministic(name):
    x = inputs(torch.float32)
    y1 = build(name, torch.float32, seed=3)(x)
    y2 = build(name, torch.float32, seed=3)(x)
    assert torch.equal(y1, y2)


def test_gradients_finite_and_params_counted(name):
    m = build(name, torch.float32)
    assert count_params(m) > 0
    x = inputs(torch.float32).requires_grad_(True)
    m(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
    with_grad = [n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad, f"{name}: no parameter receives gradient"


def test_state_measured(name):
    m = build(name, torch.float32)
    s8 = measure_state(m, 8)
    s16 = measure_state(m, 16)
    assert s8["state_bytes"] > 0
    assert s16["state_bytes"] >= s8["state_bytes"]


def test_wrong_shape_is_a_clear_error(name):
    m = build(name, torch.float32)
    with pytest.raises(ValueError, match="d_model"):
        m(torch.zeros(B, T, D + 1))
    with pytest.raises(ValueError, match="batch, time, d_model"):
        m(torch.zeros(T, D))


def _grads(m, x: torch.Tensor, fn, cot: torch.Tensor) -> dict[str, torch.Tensor]:
    """Input gradient and every parameter gradient of ``<fn(x), cot>``."""
    m.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    (fn(x) * cot).sum().backward()
    out = {"input": x.grad}
    for pname, p in m.named_parameters():
        out[pname] = torch.zeros_like(p) if p.grad is None else p.grad.clone()
    return out


def test_parallel_and_recurrent_gradients_agree_float64(name):
    """Training uses the parallel form, decoding and conformance the recurrent one: the two must be
    the same function *and* the same gradient (straight-through estimators included), or a model
    trained with one is not the model the other computes."""
    m = build(name).train()
    x = inputs()
    g = torch.Generator().manual_seed(2)
    cot = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    par = _grads(m, x, m, cot)
    rec = _grads(m, x, m.forward_recurrent, cot)
    for key, gr in rec.items():
        scale = gr.abs().max().clamp_min(1e-6)
        err = (par[key] - gr).abs().max() / scale
        assert err < 1e-7, f"{name}: gradient of {key}: parallel vs recurrent max rel err {err:.3e}"
