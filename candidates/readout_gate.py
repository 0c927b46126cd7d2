"""Post-sigmoid output gate as a modifier: ``<name>+gate`` for every registered candidate.

Seed proposal 009 (post-sigmoid gating of linear-attention / SSM readouts) and its fused form 060,
after Qiu et al. 2025, "Gated Attention for Large Language Models" (NeurIPS 2025 best paper).

Position. Qiu et al. compare gate positions; the best is G1: an elementwise, head-specific sigmoid
gate on the attention (here: the mixer's) readout, *before* the output projection, computed from the
token's own hidden state::

    y = out(o * sigmoid(W_g x + b_g))      o: the readout fed to ``out``, x: the mixer input

G1 sits between the value path and ``out``, which is where the seed's argument applies: it breaks the
low-rank linear map ``W_V ... W_O`` with an input-dependent nonlinearity and lets a token switch off
readout channels. Every candidate ends both its forms with ``Mixer.readout(o, x)``, which applies an
``output_gate`` before ``out`` (as fla's layers apply theirs); this modifier sets that gate on a built
mixer — no subclass, no wrapper. A candidate without an ``out`` projection gets its whole output gated
(Qiu et al.'s G5: ``y = mixer(x) * sigmoid(W_g x + b_g)``), the weakest position in their table. A
candidate that does not route its output through ``readout`` leaves the gate unused: ``harness
check NAME+gate`` then reports that the gate's parameters get no gradient.

Fusion (seed 060). ``W_g x`` is a matmul whose epilogue applies the sigmoid and multiplies by ``o``
(kernels/fused_gate.py): the gate never reaches memory. It is used when the tensors are on CUDA (and
triton is installed); elsewhere, the torch reference. ``mixer.output_gate.impl`` forces either
(``"auto" | "reference" | "triton"``). The gate's extra parameters: ``d_model * d_gate + d_gate``
(bias initialised to 0, so the gate starts at 0.5).
"""

from __future__ import annotations

from torch import Tensor, nn

from harness import Mixer, add_to_group, register_modifier
from harness.kernels.fused_gate import sigmoid_gate, triton_usable

GATE_IMPLS = ("auto", "reference", "triton")


class OutputGate(nn.Module):
    """``o * sigmoid(W_g x + b_g)`` for the readout ``o`` and the mixer input ``x``."""

    def __init__(self, d_model: int, d_gate: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_gate)
        nn.init.zeros_(self.gate.bias)
        self.impl = "auto"

    def _impl_for(self, x: Tensor, o: Tensor) -> str:
        if self.impl not in GATE_IMPLS:
            raise ValueError(f"unknown gate impl {self.impl!r}; allowed: {', '.join(GATE_IMPLS)}")
        if self.impl != "auto":
            return self.impl
        on_cuda = o.is_cuda and x.is_cuda and self.gate.weight.is_cuda
        return "triton" if on_cuda and triton_usable(x, o, self.gate.weight) else "reference"

    def forward(self, o: Tensor, x: Tensor) -> Tensor:
        if x.shape[:-1] != o.shape[:-1]:
            raise ValueError(
                f"gate input {tuple(x.shape)} and readout {tuple(o.shape)} differ in their tokens"
            )
        return sigmoid_gate(x, self.gate.weight, self.gate.bias, o, impl=self._impl_for(x, o))


@register_modifier(
    "gate",
    groups=("readout",),
    reference="post-sigmoid readout gate, Qiu et al. 2025 Gated Attention for LLMs (G1); seeds 009, 060",
)
def add_output_gate(mixer: Mixer) -> None:
    """Give a built mixer the readout gate: G1 before ``out`` when it has an ``nn.Linear`` ``out``,
    else G5 on its whole output."""
    out = mixer._modules.get("out")
    d_gate = out.in_features if isinstance(out, nn.Linear) else mixer.d_model
    mixer.output_gate = OutputGate(mixer.d_model, d_gate)


READOUT_BASES = ("linear-attention", "diagonal", "deltanet", "softmax")
for _base in READOUT_BASES:
    add_to_group("readout", _base, f"{_base}+gate")
