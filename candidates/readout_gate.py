"""Post-sigmoid output gate as a modifier: ``<name>+gate`` for every registered candidate.

Seed proposal 009 (post-sigmoid gating of linear-attention / SSM readouts) and its fused form 060,
after Qiu et al. 2025, "Gated Attention for Large Language Models" (NeurIPS 2025 best paper).

Position. Qiu et al. compare gate positions; the best is G1: an elementwise, head-specific sigmoid
gate on the attention (here: the mixer's) readout, *before* the output projection, computed from the
token's own hidden state. We use G1 wherever the candidate has an ``nn.Linear`` named ``out`` (every
built-in candidate does)::

    y = out(o * sigmoid(W_g x + b_g))      o: the readout fed to ``out``, x: the mixer input

G1 sits between the value path and ``out``, which is where the seed's argument applies: it breaks the
low-rank linear map ``W_V ... W_O`` with an input-dependent nonlinearity and lets a token switch off
readout channels. Gating after ``out`` (their G5) leaves that product linear and was the weakest
position in their table, so it is only the fallback for candidates without an ``out`` Linear, where
the whole output is gated: ``y = mixer(x) * sigmoid(W_g x + b_g)``.

Fusion (seed 060). ``W_g x`` is a matmul whose epilogue applies the sigmoid and multiplies by ``o``
(kernels/fused_gate.py): the gate never reaches memory. It is used when the tensors are on CUDA (and
triton is installed); elsewhere, the torch reference. ``module.out.impl`` forces either
(``"auto" | "reference" | "triton"``).

Mechanics. The wrapped class subclasses the base class, so the base's hyperparameters, methods and
class metadata (``supported_dtypes``, ``needs_cuda``, ``set_training_progress`` ...) carry over; its
``__init__`` has the base's signature. ``out`` is replaced by ``GatedReadout(out)``, which needs the
mixer input ``x``: ``forward`` / ``step`` / every implementation push ``x`` on a small stack for the
duration of the call, and ``GatedReadout`` raises if it is called outside one. The gate's extra
parameters: ``d_model * in_features + in_features`` (bias initialised to 0, so the gate starts at 0.5).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from harness.kernels.fused_gate import sigmoid_gate, triton_usable
from torch import Tensor, nn

from harness import Mixer, add_to_group, register_modifier
from harness.registry import CandidateSpec

GATE_IMPLS = ("auto", "reference", "triton")


class GatedReadout(nn.Module):
    """``proj(o * sigmoid(gate(x)))``, with ``x`` the mixer input of the current call."""

    def __init__(self, proj: nn.Linear | None, d_model: int, d_gate: int) -> None:
        super().__init__()
        self.proj = proj
        self.gate = nn.Linear(d_model, d_gate)
        nn.init.zeros_(self.gate.bias)
        self.impl = "auto"
        self._inputs: list[Tensor] = []

    @contextmanager
    def context(self, x: Tensor) -> Iterator[None]:
        self._inputs.append(x)
        try:
            yield
        finally:
            self._inputs.pop()

    def _impl_for(self, x: Tensor, o: Tensor) -> str:
        if self.impl not in GATE_IMPLS:
            raise ValueError(f"unknown gate impl {self.impl!r}; allowed: {', '.join(GATE_IMPLS)}")
        if self.impl != "auto":
            return self.impl
        on_cuda = o.is_cuda and x.is_cuda and self.gate.weight.is_cuda
        return "triton" if on_cuda and triton_usable(x, o, self.gate.weight) else "reference"

    def forward(self, o: Tensor) -> Tensor:
        if not self._inputs:
            raise RuntimeError(
                "GatedReadout needs the mixer input: call the gated mixer (forward / step / implementations), "
                "not its `out` module directly"
            )
        x = self._inputs[-1]
        if x.shape[:-1] != o.shape[:-1]:
            if x.shape[:-1].numel() != o.shape[:-1].numel():
                raise ValueError(
                    f"gate input {tuple(x.shape)} and readout {tuple(o.shape)} have different token counts"
                )
            x = x.reshape(*o.shape[:-1], x.shape[-1])  # e.g. step: x_t [B, D] vs o [B, 1, D]
        gated = sigmoid_gate(x, self.gate.weight, self.gate.bias, o, impl=self._impl_for(x, o))
        return gated if self.proj is None else self.proj(gated)


def _gated_class(base: type) -> type:
    if not (isinstance(base, type) and issubclass(base, Mixer)):
        raise TypeError(f"the gate modifier wraps Mixer subclasses, got {base!r}")

    def __init__(self, d_model: int, *args, **kwargs) -> None:
        base.__init__(self, d_model, *args, **kwargs)
        out = getattr(self, "out", None)
        if isinstance(out, nn.Linear):
            self.out = GatedReadout(out, d_model, out.in_features)
            self.gate_position = "readout"  # Qiu et al. G1
        else:
            self.output_gate = GatedReadout(None, d_model, d_model)
            self.gate_position = "output"  # fallback: Qiu et al. G5

    __init__.__signature__ = inspect.signature(base.__init__)  # the registry validates hparams on it

    def _gate(self) -> GatedReadout:
        return self.out if self.gate_position == "readout" else self.output_gate

    def _call(self, fn: Callable, x: Tensor, *rest):
        gate = self._gate()
        with gate.context(x):
            result = fn(x, *rest)
            if self.gate_position == "output":
                if isinstance(result, tuple):  # step: (y_t, state)
                    return (gate(result[0]),) + tuple(result[1:])
                return gate(result)
            return result

    def forward(self, x: Tensor) -> Tensor:
        return self._call(partial(base.forward, self), x)

    def step(self, x_t: Tensor, state):
        return self._call(partial(base.step, self), x_t, state)

    def _forward_with_gate_impl(self, impl: str, x: Tensor) -> Tensor:
        gate = self._gate()
        previous, gate.impl = gate.impl, impl
        try:
            return self.forward(x)
        finally:
            gate.impl = previous

    def implementations(self) -> dict[str, Callable[[Tensor], Tensor]]:
        impls: dict[str, Callable[[Tensor], Tensor]] = {}
        for key, fn in base.implementations(self).items():
            if key in ("parallel", "recurrent"):
                impls[key] = fn  # forward / forward_recurrent -> step already set the gate input
            else:  # a base fast path that calls self.out itself
                impls[key] = partial(self._call, fn)
        impls["parallel-gate-reference"] = partial(self._forward_with_gate_impl, "reference")
        weight = self._gate().gate.weight
        if weight.is_cuda and triton_usable(weight):
            impls["parallel-gate-triton"] = partial(self._forward_with_gate_impl, "triton")
        return impls

    name = f"Gated{base.__name__}"
    namespace = {
        "__init__": __init__,
        "_gate": _gate,
        "_call": _call,
        "forward": forward,
        "step": step,
        "_forward_with_gate_impl": _forward_with_gate_impl,
        "implementations": implementations,
        "__doc__": f"{base.__name__} with a post-sigmoid readout gate (see {__name__}).\n\n{base.__doc__ or ''}",
        "__module__": __name__,
        "__qualname__": name,
        "gated_base": base,
    }
    return type(name, (base,), namespace)


_WRAPPED: dict[type, type] = {}


@register_modifier(
    "gate",
    groups=("readout",),
    reference="post-sigmoid readout gate, Qiu et al. 2025 Gated Attention for LLMs (G1); seeds 009, 060",
)
def wrap(spec: CandidateSpec) -> type:
    """The class of ``<spec.name>+gate``: one class per base class, cached (and importable for pickle)."""
    base = spec.cls
    if base not in _WRAPPED:
        cls = _gated_class(base)
        name = cls.__qualname__
        if name in globals() and globals()[name] is not cls:  # two bases with one class name
            name = f"{name}_{len(_WRAPPED)}"
            cls.__qualname__ = cls.__name__ = name
        globals()[name] = cls
        _WRAPPED[base] = cls
    return _WRAPPED[base]


READOUT_BASES = ("linear-attention", "diagonal", "deltanet", "softmax")
for _base in READOUT_BASES:
    add_to_group("readout", _base, f"{_base}+gate")


def __getattr__(name: str) -> type:
    """Gated classes by name, for unpickling in a process that has not resolved ``<base>+gate`` yet."""
    from harness.registry import _CANDIDATES, load_plugins

    load_plugins()
    for spec in list(_CANDIDATES.values()):
        if f"Gated{spec.cls.__name__}" == name:
            return wrap(spec)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
