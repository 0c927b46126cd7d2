"""The ``+gate`` modifier: resolution, signature, gate position (G1), fallback, pickling.

Conformance (parallel == recurrent, causality, dtypes, ...) of every ``x+gate`` in group ``readout``
runs in tests/test_conformance.py; this file checks what is specific to the wrapper.
"""

from __future__ import annotations

import inspect
import pickle

import pytest
import torch
from harness.candidates.readout_gate import READOUT_BASES, GatedReadout, wrap
from torch import nn

from harness import Mixer, RegistryError, get_candidate
from harness.registry import CandidateSpec, constructor_defaults, group_members


def test_group_lists_gated_and_ungated_pairs():
    members = group_members("readout")
    for base in READOUT_BASES:
        assert base in members and f"{base}+gate" in members


@pytest.mark.parametrize("base", ["linear-attention", "softmax"])
def test_gated_class_keeps_base_hyperparameters(base):
    spec, gspec = get_candidate(base), get_candidate(f"{base}+gate")
    assert constructor_defaults(gspec.cls) == constructor_defaults(spec.cls)
    assert list(inspect.signature(gspec.cls).parameters) == list(inspect.signature(spec.cls).parameters)
    assert issubclass(gspec.cls, spec.cls) and gspec.modifier == "gate" and gspec.base == base
    assert get_candidate(f"{base}+gate").cls is gspec.cls  # one class per base, cached
    m = gspec.build(32, n_heads=2)
    assert m.n_heads == 2
    with pytest.raises(RegistryError, match="n_head"):
        gspec.build(32, n_head=2)


def _captured(m: Mixer, x: torch.Tensor):
    seen = {}
    h1 = m.out.register_forward_pre_hook(lambda mod, args: seen.__setitem__("o", args[0]))
    h2 = m.out.proj.register_forward_pre_hook(lambda mod, args: seen.__setitem__("proj_in", args[0]))
    y = m(x)
    h1.remove()
    h2.remove()
    return y, seen


@pytest.mark.parametrize("base", ["linear-attention", "softmax"])
def test_gate_is_at_readout_before_out_projection(base):
    """G1: the output projection receives ``o * sigmoid(W_g x + b)`` with ``o`` the ungated readout."""
    torch.manual_seed(0)
    m = get_candidate(f"{base}+gate").build(32).double()
    assert m.gate_position == "readout" and isinstance(m.out, GatedReadout)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    y, seen = _captured(m, x)
    gate = torch.sigmoid(m.out.gate(x))
    torch.testing.assert_close(seen["proj_in"], seen["o"] * gate)
    torch.testing.assert_close(y, m.out.proj(seen["o"] * gate))


@pytest.mark.parametrize("base", ["linear-attention", "softmax"])
def test_open_gate_recovers_the_base_candidate(base):
    """With the gate saturated open the gated mixer is the base mixer with the same weights."""
    torch.manual_seed(5)
    plain = get_candidate(base).build(32).double()
    torch.manual_seed(5)
    gated = get_candidate(f"{base}+gate").build(32).double()  # base params are drawn first: identical
    with torch.no_grad():
        gated.out.gate.weight.zero_()
        gated.out.gate.bias.fill_(60.0)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(gated(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gated.forward_recurrent(x), plain.forward_recurrent(x), rtol=1e-10, atol=1e-12)


def test_gate_changes_the_output_and_learns():
    m = get_candidate("linear-attention+gate").build(32)
    x = torch.randn(2, 10, 32)
    m(x).square().mean().backward()
    assert m.out.gate.weight.grad.abs().sum() > 0 and m.out.gate.bias.grad.abs().sum() > 0


class _NoOut(Mixer):
    """Toy causal mixer without an ``out`` Linear: exponential moving average of a projection."""

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(self, d_model: int, decay: float = 0.5) -> None:
        super().__init__(d_model)
        self.decay = decay
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        u = self.proj(x)
        t = torch.arange(x.shape[1], dtype=x.dtype)
        w = torch.tril(self.decay ** (t[:, None] - t[None, :]).clamp_min(0))
        return torch.einsum("ts,bsd->btd", w, u)

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, self.d_model, device=device, dtype=dtype)

    def step(self, x_t, state):
        state = self.decay * state + self.proj(x_t)
        return state, state


def test_fallback_gates_the_output_when_there_is_no_out_linear():
    cls = wrap(CandidateSpec("toy-no-out", _NoOut, (), ""))
    assert constructor_defaults(cls) == {"decay": 0.5}
    torch.manual_seed(0)
    m = cls(16, decay=0.7).double()
    assert m.gate_position == "output"
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    expected = _NoOut.forward(m, x) * torch.sigmoid(m.output_gate.gate(x))
    torch.testing.assert_close(m(x), expected)
    torch.testing.assert_close(m.forward_recurrent(x), expected)


def test_out_module_outside_a_call_is_an_error():
    m = get_candidate("linear-attention+gate").build(32)
    with pytest.raises(RuntimeError, match="mixer input"):
        m.out(torch.randn(2, 3, 32))


def test_implementations_agree_and_pickle_roundtrip():
    torch.manual_seed(0)
    m = get_candidate("softmax+gate").build(32).double()
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    impls = m.implementations()
    assert {"parallel", "recurrent", "parallel-gate-reference"} <= set(impls)
    ref = impls["parallel"](x)
    for name, fn in impls.items():
        torch.testing.assert_close(fn(x), ref, msg=name)
    clone = pickle.loads(pickle.dumps(m))
    assert type(clone) is type(m)
    torch.testing.assert_close(clone(x), ref)
