"""The ``+gate`` modifier: resolution, hyperparameters, gate position (G1), fallback (G5), pickling.

Conformance (parallel == recurrent, causality, dtypes, ...) of every ``x+gate`` in group ``readout``
runs in tests/test_conformance.py; this file checks what is specific to the modifier.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from harness import Mixer, RegistryError, get_candidate
from harness.candidates.readout_gate import READOUT_BASES, OutputGate, add_output_gate
from harness.conformance import check_candidate
from harness.registry import group_members, register_candidate, unregister


def test_group_lists_gated_and_ungated_pairs():
    members = group_members("readout")
    for base in READOUT_BASES:
        assert base in members and f"{base}+gate" in members


@pytest.mark.parametrize("base", ["linear-attention", "softmax"])
def test_gated_name_keeps_the_base_class_and_hyperparameters(base):
    spec, gspec = get_candidate(base), get_candidate(f"{base}+gate")
    assert gspec.cls is spec.cls and gspec.hparam_defaults == spec.hparam_defaults
    assert gspec.modifier == "gate" and gspec.base == base and gspec.applies == (add_output_gate,)
    assert gspec.source_hash() != spec.source_hash()  # the modifier's module is part of its identity
    m = gspec.build(32, n_heads=2)
    assert m.n_heads == 2 and isinstance(m.output_gate, OutputGate)
    with pytest.raises(RegistryError, match="n_head"):
        gspec.build(32, n_head=2)


@pytest.mark.parametrize("base", ["linear-attention", "softmax", "diagonal", "deltanet"])
def test_gate_is_at_readout_before_out_projection(base):
    """G1: the output projection receives ``o * sigmoid(W_g x + b)`` with ``o`` the ungated readout."""
    torch.manual_seed(0)
    m = get_candidate(f"{base}+gate").build(32).double()
    seen = {}
    h1 = m.output_gate.register_forward_hook(lambda mod, args, out: seen.update(o=args[0], x=args[1]))
    h2 = m.out.register_forward_pre_hook(lambda mod, args: seen.__setitem__("proj_in", args[0]))
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    y = m(x)
    h1.remove(), h2.remove()
    assert seen["x"] is x
    gate = torch.sigmoid(m.output_gate.gate(x))
    torch.testing.assert_close(seen["proj_in"], seen["o"] * gate)
    torch.testing.assert_close(y, m.out(seen["o"] * gate))


@pytest.mark.parametrize("base", ["linear-attention", "softmax"])
def test_open_gate_recovers_the_base_candidate(base):
    """With the gate saturated open the gated mixer is the base mixer with the same weights."""
    torch.manual_seed(5)
    plain = get_candidate(base).build(32).double()
    torch.manual_seed(5)
    gated = get_candidate(f"{base}+gate").build(32).double()  # base params are drawn first: identical
    with torch.no_grad():
        gated.output_gate.gate.weight.zero_()
        gated.output_gate.gate.bias.fill_(60.0)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(gated(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gated.forward_recurrent(x), plain.forward_recurrent(x), rtol=1e-10, atol=1e-12)


def test_gate_changes_the_output_and_learns():
    m = get_candidate("linear-attention+gate").build(32)
    x = torch.randn(2, 10, 32)
    m(x).square().mean().backward()
    assert m.output_gate.gate.weight.grad.abs().sum() > 0 and m.output_gate.gate.bias.grad.abs().sum() > 0


class _NoOut(Mixer):
    """Toy causal mixer without an ``out`` Linear: an exponential moving average of a projection,
    ending both forms with ``readout`` as the contract asks."""

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(self, d_model: int, decay: float = 0.5) -> None:
        super().__init__(d_model)
        self.decay = decay
        self.proj = nn.Linear(d_model, d_model)

    def ema(self, x):
        u = self.proj(x)
        t = torch.arange(x.shape[1], dtype=x.dtype)
        w = torch.tril(self.decay ** (t[:, None] - t[None, :]).clamp_min(0))
        return torch.einsum("ts,bsd->btd", w, u)

    def forward(self, x):
        return self.readout(self.ema(x), x)

    def init_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, self.d_model, device=device, dtype=dtype)

    def step(self, x_t, state):
        state = self.decay * state + self.proj(x_t)
        return self.readout(state, x_t), state


class _NoReadout(_NoOut):
    """Breaks the contract: never calls ``readout``, so a modifier cannot reach its output."""

    def forward(self, x):
        return self.ema(x)

    def step(self, x_t, state):
        state = self.decay * state + self.proj(x_t)
        return state, state


@pytest.fixture
def toy_mixers():
    register_candidate("toy-no-out")(_NoOut)
    register_candidate("toy-no-readout")(_NoReadout)
    yield
    unregister("toy-no-out")
    unregister("toy-no-readout")


def test_fallback_gates_the_whole_output_when_there_is_no_out_linear(toy_mixers):
    torch.manual_seed(0)
    m = get_candidate("toy-no-out+gate").build(16, decay=0.7).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    expected = m.ema(x) * torch.sigmoid(m.output_gate.gate(x))
    torch.testing.assert_close(m(x), expected)
    torch.testing.assert_close(m.forward_recurrent(x), expected)


def test_a_mixer_that_skips_readout_is_caught_by_check(toy_mixers):
    results = {r.check: r for r in check_candidate("toy-no-readout+gate")}
    assert results["gradients finite"].status == "fail"
    assert "output_gate" in results["gradients finite"].detail
    assert all(r.status != "fail" for r in check_candidate("toy-no-out+gate"))


def test_pickle_roundtrip():
    torch.manual_seed(0)
    m = get_candidate("softmax+gate").build(32).double()
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    clone = pickle.loads(pickle.dumps(m))
    torch.testing.assert_close(clone(x), m(x))
